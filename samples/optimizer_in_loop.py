"""Optimizer lifetime: a new Adam built inside the training loop.

It trains, but each Adam starts with empty state: the running averages of the gradient and
of its square restart from zero at every step, so every update is a bias-corrected *first*
step (about ``lr * sign(grad)``), and the adaptive scaling Adam exists for never builds up.

gradscope should report:
- optimizer-recreated (warning): Adam constructed 5 times at line 24, each stepping once.

Near miss: samples/step_order_ok.py (one optimizer per training stage, each stepping many
times).
Run: gradscope trace samples/optimizer_in_loop.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(5):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
