"""A NaN gradient from ``sqrt`` at 0: a distance computed as ``sqrt(sum of squares)``.

``torch.sqrt`` has an infinite derivative at 0. The distance of a point to itself is 0, so its
gradient is ``inf * 0 = nan``, and one optimizer step turns the weights into NaN.

gradscope should report:
- nonfinite-grad (error): NaN in the gradients of ``model.proj.weight``, ``model.proj.bias``.
- tied-weights (info): ``proj`` is applied twice, so its gradients from both uses add up.

Run: gradscope trace samples/nan_sqrt.py
     gradscope trace samples/nan_sqrt.py --find-nonfinite   # also names SqrtBackward0 as the origin
"""
import torch
from torch import nn


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)

    def forward(self, a, b):
        diff = self.proj(a) - self.proj(b)
        return torch.sqrt((diff ** 2).sum(dim=1))  # no epsilon: d/dx sqrt(x) at 0 is inf


def main():
    torch.manual_seed(0)
    model = Embedder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = torch.randn(6, 4)
    b = a.clone()
    b[3:] = torch.randn(3, 4)  # the first three pairs are identical: distance exactly 0
    opt.zero_grad()
    model(a, b).mean().backward()
    opt.step()
    print("weights finite:", bool(torch.isfinite(model.proj.weight).all()))


if __name__ == "__main__":
    main()
