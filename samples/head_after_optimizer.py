"""A new classifier head attached after the optimizer was created: it is never updated.

Fine-tuning code often replaces ``model.fc`` after building the optimizer. The new head gets
gradients on every step, but the optimizer only holds the old parameters.

gradscope should report:
- param-not-in-optimizer (error): ``fc.weight`` and ``fc.bias`` receive gradients but are in no
  optimizer param group; hint: build the optimizer after the model is complete.
- Nothing for the replaced head: it is gone from the model, so it is not "unused".

Run: gradscope trace samples/head_after_optimizer.py
"""
import torch
from torch import nn


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.fc = nn.Linear(64, 100)

    def forward(self, x):
        return self.fc(self.features(x))


def main():
    torch.manual_seed(0)
    model = Backbone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.fc = nn.Linear(64, 5)  # new task head, added after the optimizer: never trained
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    for step in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
