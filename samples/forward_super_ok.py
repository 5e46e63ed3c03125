"""Near miss for forward-called-directly: forward reached the normal way.

- A subclass that extends its parent's forward with ``super().forward(x)`` (inside the
  module's own call, so its hooks ran).
- A method other than forward called on purpose (``model.embed(x)``, as CLIP's
  ``encode_image``): the submodules it calls are still named inside ``model``.

gradscope should report no findings.

Run: gradscope trace samples/forward_super_ok.py
"""
import torch
from torch import nn


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.embed(x))


class Scaled(Base):
    def forward(self, x):
        return super().forward(x) * 2.0


def main():
    torch.manual_seed(0)
    model = Scaled()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(3):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        print("embedding norm", model.embed(x).norm().item())


if __name__ == "__main__":
    main()
