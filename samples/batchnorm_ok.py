"""Near miss for batchnorm-small-batch and bias-before-norm.

Batch norm trains on batches of 32, and a single image goes through it only for inference,
after ``model.eval()`` (running statistics, no batch statistics). The convs that feed batch
norm have ``bias=False``; the Linear that keeps its bias feeds a ReLU before the BatchNorm1d,
so the bias is not cancelled.

gradscope should report: nothing.

Run: gradscope trace samples/batchnorm_ok.py
"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 32)  # bias kept: a ReLU sits between it and the norm
        self.bn1d = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.head(self.bn1d(torch.relu(self.fc(h))))


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 2, (64,))
    for step in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        print("prediction", model(x[:1]).argmax(1).item())  # one image, in eval mode: fine


if __name__ == "__main__":
    main()
