"""``model.eval()`` left on from an evaluation, then training continues.

The first evaluation switches the model to eval mode; the loop never switches it back, so every
later training step runs without dropout and with frozen BatchNorm statistics.

gradscope should report:
- eval-mode-train (warning): optimizer steps used gradients from forwards with ``model.1`` and
  ``model.3`` (BatchNorm1d, Dropout) in eval mode.

Run: gradscope trace samples/train_in_eval_mode.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    model.eval()  # e.g. a sanity-check evaluation before training...
    with torch.no_grad():
        model(x)
    for step in range(3):  # ...and model.train() is never called again
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
