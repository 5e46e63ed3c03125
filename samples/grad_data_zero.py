"""Seed 001: zeroing gradients by hand with ``param.grad.data.zero_()`` — done right.

The notes zero ``x.grad.data.zero_()`` between two backward calls so the second gradient is not
added to the first. This loop does the same for every parameter before each backward. ``.data``
bypasses autograd's version counter, so nothing in autograd records the reset: gradscope compares
a few gradient values on the device instead, and sees that each step starts from zero.

gradscope should report:
- Nothing: gradients are reset before every backward (no missing-zero-grad).

Run: gradscope trace samples/grad_data_zero.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    # The notes' one-tensor demonstration.
    x = torch.ones(2, 3, requires_grad=True)
    x.mean().backward()
    x.grad.data.zero_()  # without this line the next backward would add to it
    x.mean().backward()
    print("x.grad after zeroing:", x.grad[0, 0].item())  # 1/6 again

    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data, target = torch.randn(32, 6), torch.randn(32, 1)
    for step in range(4):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.data.zero_()  # the notes' manual reset
        nn.functional.mse_loss(model(data), target).backward()
        opt.step()


if __name__ == "__main__":
    main()
