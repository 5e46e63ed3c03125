"""A head created on the first forward call, "when the input size is known".

``forward`` builds ``self.head`` the first time it runs and assigns it onto the model. It is built
once (not every call), but after the optimizer was created, so the optimizer never sees it.
``nn.LazyLinear`` is the supported way to do this.

gradscope should report:
- layer-in-forward (warning): ``Linear`` constructed inside ``model.forward()`` and assigned as
  ``model.head``, built once.
- param-not-in-optimizer (error): ``head.weight``, ``head.bias`` receive gradients but are in no
  optimizer.

Run: gradscope trace samples/lazy_head_in_forward.py
"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(12, 24)

    def forward(self, x):
        h = torch.relu(self.body(x))
        if not hasattr(self, "head"):
            self.head = nn.Linear(h.shape[-1], 3)  # built on first use, after the optimizer
        return self.head(h)


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    for step in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
