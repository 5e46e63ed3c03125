"""Validation under ``torch.no_grad()`` without ``model.eval()`` (seed 000/001 notes on BN).

``no_grad`` only stops gradient tracking; it does not switch Dropout off or make BatchNorm use its
running statistics. Here validation batches also overwrite BatchNorm's running statistics.

gradscope should report:
- train-mode-eval (warning): forwards of ``model`` under no_grad with ``model.drop`` and
  ``model.bn`` in training mode; BatchNorm statistics were updated by them.
- bias-before-norm (info): ``model.fc1`` keeps a bias that ``model.bn`` right after it
  cancels (a side note, true of this model).

Run: gradscope trace samples/validate_without_eval.py
"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 12), torch.randint(0, 2, (32,))
    xv, yv = torch.randn(32, 12), torch.randint(0, 2, (32,))
    for epoch in range(2):
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        with torch.no_grad():  # the mistake: no model.eval() before this
            acc = (model(xv).argmax(1) == yv).float().mean()
        print(f"epoch {epoch}: val acc {acc.item():.2f}")


if __name__ == "__main__":
    main()
