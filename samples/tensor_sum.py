"""Near miss for builtin-sum: ``tensor.sum()``, and a Python sum over a short list of losses.

``t.sum()`` is one node. Adding a handful of separate loss terms with Python's ``sum()`` is
normal: they are different tensors, not the elements of one.

gradscope should report: nothing.

Run: gradscope trace samples/tensor_sum.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Linear(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        terms = [out.pow(2).mean(), out.abs().mean(), out.mean(0).sum()]  # three real terms
        loss = sum(terms) + out.sum() * 0.01  # builtin sum of 3 tensors; tensor.sum(): fine
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
