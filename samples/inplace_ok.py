"""Near miss for inplace-modified: in-place operations autograd is happy with.

A residual block written the torchvision way (``out += identity`` on the batch-norm output,
then ``ReLU(inplace=True)``) and an in-place update of a counter buffer under ``no_grad``
change tensors that no backward formula saved, so training works; the hand-written softmax
normalises out of place. (Swap the two lines, ReLU first and then ``out += x``, and the add
overwrites the output ReLU saved: gradscope names that line.)

gradscope should report: nothing.

Run: gradscope trace samples/inplace_ok.py
"""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x  # batch norm did not save its output: fine in place
        out = self.relu(out)
        with torch.no_grad():
            self.seen += 1
        return out


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.blocks(self.stem(x)).mean((2, 3))
        w = torch.exp(h)
        w = w / w.sum(-1, keepdim=True)  # out of place: exp's saved output stays intact
        return self.head(h * w)


def main():
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
