"""Training a BatchNorm network one image at a time (seed 002 on BatchNorm).

With a batch of 1, ``BatchNorm2d`` runs without a word but normalises each image with its own
statistics: the network trains like instance norm, and the running statistics it uses after
``eval()`` do not match what training saw.

gradscope should report:
- batchnorm-small-batch (warning): ``model.bn1`` and ``model.bn2`` (one finding) train on a
  batch of 1;
  hint: a larger batch, ``drop_last=True``, or GroupNorm.

Run: gradscope trace samples/batchnorm_batch_of_one.py
"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 2, (4,))
    for i in range(4):
        opt.zero_grad()
        x, y = images[i:i + 1], labels[i:i + 1]  # the mistake: one image per step
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
