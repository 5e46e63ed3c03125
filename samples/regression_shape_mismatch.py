"""A regression model that learns only the mean: the prediction is (N, 1), the target (N,).

The head ends in ``nn.Linear(32, 1)``, so predictions have shape (64, 1); the targets are a
plain vector of shape (64,). ``nn.MSELoss`` broadcasts the two to (64, 64) and averages every
prediction against every target (torch prints one warning, easy to miss in a training log), and
the hand-written ``((pred - y) ** 2).mean()`` does the same without a word. The loss still goes
down: towards the variance of the targets, by predicting their mean.

gradscope should report:
- loss-broadcast (error): both call sites, with the shapes and the fix (pred.squeeze(-1)).

Run: gradscope trace samples/regression_shape_mismatch.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8)                      # shape (64,): one target per sample
    criterion = nn.MSELoss()
    for step in range(3):
        opt.zero_grad()
        pred = model(x)                         # shape (64, 1)
        loss = criterion(pred, y)               # broadcast to (64, 64)
        loss.backward()
        opt.step()
    for step in range(2):                       # the same mistake written by hand
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
