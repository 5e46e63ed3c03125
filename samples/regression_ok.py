"""Near miss for loss-broadcast: the same regression with matching shapes, and pairwise
differences on purpose.

``pred.squeeze(-1)`` makes the prediction (64,) like the target. A ranking loss that compares
every score with every other score builds an (N, N) matrix deliberately: both sides come from
the model, so it is not a prediction broadcast against a target.

gradscope should report: nothing.

Run: gradscope trace samples/regression_ok.py
"""
import torch
from torch import nn
import torch.nn.functional as F


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8)                       # shape (64,)
    for step in range(3):
        opt.zero_grad()
        pred = model(x).squeeze(-1)              # shape (64,), like y
        mse = F.mse_loss(pred, y)
        pairwise = pred.unsqueeze(1) - pred      # (64, 64) on purpose: RankNet-style pairs
        order = torch.sign(y.unsqueeze(1) - y)   # targets' order, no gradient needed
        rank = F.softplus(-order * pairwise).mean()
        (mse + 0.1 * rank).backward()
        opt.step()


if __name__ == "__main__":
    main()
