"""Seed 003: Python's builtin ``sum(t)`` over a tensor instead of ``t.sum()``.

``sum(t)`` iterates the tensor in Python: it is unbound into one-element views and added one by
one, one ``AddBackward0`` node per element, so the graph grows with the tensor's length (and it is
slow). ``t.sum()`` is one node.

gradscope should report:
- builtin-sum (warning): a chain of 64 add nodes over the one-element pieces of one tensor
  (one ``UnbindBackward0``), which one ``t.sum()`` node would replace (this file's ``sum(t)``
  line).

Run: gradscope trace samples/builtin_sum.py
"""
import torch
from torch import nn


class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 64)

    def forward(self, x):
        t = self.proj(x).mean(dim=0)  # 64 values
        return sum(t)                 # Python builtin: unbind + 64 add nodes


def main():
    torch.manual_seed(0)
    model = Scorer()
    score = model(torch.randn(8, 16))
    score.backward()
    good = model.proj(torch.randn(8, 16)).mean(dim=0).sum()  # one SumBackward0 node
    print(score.item(), good.item())


if __name__ == "__main__":
    main()
