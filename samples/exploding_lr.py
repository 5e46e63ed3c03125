"""A learning rate far too high: the updates overshoot and the gradients grow without bound.

Each step lands further from the minimum than the last, so the loss and every gradient norm grow
by orders of magnitude within a few steps — a few more and they overflow to Inf/NaN.

gradscope should report:
- exploding-grad (warning): the total gradient norm grew from about 5 to about 7e8 in 6 steps.

Run: gradscope trace samples/exploding_lr.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)  # the mistake: ~0.05 would converge
    x, y = torch.randn(32, 16) * 2, torch.randn(32, 1)
    for step in range(6):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.3g}")


if __name__ == "__main__":
    main()
