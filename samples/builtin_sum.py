"""Seed 003: Python's builtin ``sum(t)`` over a tensor instead of ``t.sum()``.

``sum(t)`` iterates the tensor in Python: one ``select`` and one ``add`` autograd node per
element, so the graph grows with the tensor's length (and it is slow). ``t.sum()`` is one node.

gradscope should report:
- builtin-sum (warning): a chain of 64 add nodes over single-element selections of one tensor,
  which one ``t.sum()`` node would replace (this file's ``sum(t)`` line).

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
        return sum(t)                 # Python builtin: 64 select + 64 add nodes


def main():
    torch.manual_seed(0)
    model = Scorer()
    score = model(torch.randn(8, 16))
    score.backward()
    good = model.proj(torch.randn(8, 16)).mean(dim=0).sum()  # one SumBackward0 node
    print(float(score), float(good))


if __name__ == "__main__":
    main()
