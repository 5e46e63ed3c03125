"""``torch.log`` of a ReLU output: log(0) is -inf, so the loss is not finite.

A "log-likelihood" written as ``log(relu(...))`` breaks as soon as one unit is inactive: the loss
becomes +inf. The gradients happen to stay finite here (ReLU's backward zeroes them where it was
off), so nothing crashes and the bug hides: only the loss says so.

gradscope should report:
- nonfinite-loss (error): backward was called on an Inf loss, at this file's backward line.

Run: gradscope trace samples/log_of_relu.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 8)
    opt.zero_grad()
    loss = -torch.log(model(x)).mean()  # log(0) = -inf wherever the ReLU is off
    loss.backward()
    opt.step()
    print("loss:", loss.item())


if __name__ == "__main__":
    main()
