"""``optimizer.zero_grad()`` placed between ``loss.backward()`` and ``optimizer.step()``.

The gradients are computed, then thrown away before the step can use them: every update is
empty and the model never learns, while the loss printout just stays flat. No error, no
warning from PyTorch.

gradscope should report:
- zero-grad-before-step (error): at every step all parameters that received gradients had them
  cleared by the zero_grad() on the line between backward() and step().

Run: gradscope trace samples/zero_grad_after_backward.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    for step in range(4):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.zero_grad()   # the mistake: belongs before backward(), or after step()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}")  # never goes down


if __name__ == "__main__":
    main()
