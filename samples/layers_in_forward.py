"""Seed 003: layers built inside forward() — and an ``__int__`` typo — so nothing is ever trained.

``MyModel.__int__`` (sic) is never called, so ``super().__init__()`` only runs through the default
constructor, and every layer is created inside ``forward``: fresh random weights on every call,
none of them in ``model.parameters()``; an optimizer would have nothing to update.

gradscope should report:
- layer-in-forward (error): ``Conv2d`` and ``Linear`` constructed inside ``MyModel.forward`` on
  every call (3 forwards here), with this file's line numbers.
- The graph's weight leaves are marked ``unregistered``: they belong to no model's parameters.
- The model has no parameters at all (a note).

Run: gradscope trace samples/layers_in_forward.py
"""
import torch
from torch import nn


class MyModel(nn.Module):
    def __int__(self):  # the typo from the notes: this is never called
        super(MyModel, self).__init__()

    def forward(self, x):
        conv1 = nn.Conv2d(1, 32, kernel_size=3)  # a new layer on every call
        fc1 = nn.Linear(32 * 26 * 26, 10)
        x = conv1(x)
        x = x.view(x.size(0), -1)
        x = fc1(x)
        return x


def main():
    torch.manual_seed(0)
    model = MyModel()
    print("parameters:", [name for name, _ in model.named_parameters()])  # prints []
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    for epoch in range(3):
        loss = criterion(model(x), y)
        loss.backward()
        print(f"epoch {epoch + 1}, loss {loss.item():.4f}")  # never improves


if __name__ == "__main__":
    main()
