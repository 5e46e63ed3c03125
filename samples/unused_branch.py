"""An auxiliary head defined in ``__init__`` but never used in ``forward``.

Its parameters never get a gradient. Alone that only wastes memory, but under
``DistributedDataParallel`` it raises an error at the second step unless
``find_unused_parameters=True`` is passed — and DDP's message does not name the parameters.

gradscope should report:
- unused-parameter (warning): ``aux.weight``, ``aux.bias`` of ``model`` never received a
  gradient; mentions DDP's ``find_unused_parameters``.
- Nothing for ``frozen``: parameters with ``requires_grad=False`` are deliberate.

Run: gradscope trace samples/unused_branch.py
"""
import torch
from torch import nn


class WithAux(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(10, 10).requires_grad_(False)  # frozen on purpose: fine
        self.main = nn.Linear(10, 4)
        self.aux = nn.Linear(10, 4)  # forgotten: never called

    def forward(self, x):
        return self.main(self.frozen(x))


def main():
    torch.manual_seed(0)
    model = WithAux()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    for step in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
