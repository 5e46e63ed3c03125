"""A deep MLP with sigmoid activations: the gradients vanish on their way back.

The derivative of a sigmoid is at most 1/4, so twenty layers of it shrink the gradient reaching
the first layer by many orders of magnitude; those layers stop learning.

gradscope should report:
- vanishing-grad (warning): the first layer's gradient norm is far below the last layer's.

Run: gradscope trace samples/vanishing_sigmoid.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    layers = []
    for _ in range(20):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 32), torch.randn(64, 1)
    for step in range(8):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
