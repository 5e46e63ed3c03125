"""Seed 001: LeNet with BatchNorm, trained without ``optimizer.zero_grad()``.

PyTorch adds each ``backward()`` into ``.grad``. The notes show it on a single tensor
(``x.grad`` doubles unless zeroed); here the training loop forgets ``zero_grad()``, so every
step applies the sum of all gradients so far.

gradscope should report:
- missing-zero-grad (error): every parameter's gradient at step k holds k backward calls; no
  ``zero_grad`` is called in the loop (this file's ``opt.step()`` line).
- The accumulation section of the JSON: 1, 2, 3, 4 backward calls summed per step.
- bias-before-norm (info): the convs and Linears of this LeNet (as in the notes) keep biases
  that the BatchNorm right after each cancels.

Run: gradscope trace samples/forgot_zero_grad.py
"""
import torch
from torch import nn


class FlattenLayer(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        FlattenLayer(),
        nn.Linear(16 * 4 * 4, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def main():
    torch.manual_seed(0)
    # The notes' single-tensor demonstration: gradients add up until zeroed.
    x = torch.ones(2, 3, requires_grad=True)
    x.mean().backward()
    x.mean().backward()
    print("x.grad after two backward calls:", x.grad[0, 0].item())  # 2/6, not 1/6

    net = lenet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for step in range(4):
        loss = criterion(net(images), labels)
        loss.backward()  # no opt.zero_grad() before this: gradients pile up
        opt.step()


if __name__ == "__main__":
    main()
