"""Conv layers with ``bias=True`` straight into BatchNorm: the bias is cancelled.

Batch norm subtracts each channel's batch mean, so a per-channel constant added just before it
disappears: the conv biases are parameters the optimizer updates for nothing.

gradscope should report:
- bias-before-norm (info): ``model.features.0 -> model.features.1`` and
  ``model.features.3 -> model.features.4``; hint: ``bias=False``.

Run: gradscope trace samples/conv_bias_before_bn.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),  # bias=True by default
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.head = nn.Linear(32, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
