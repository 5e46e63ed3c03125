"""Correct gradient accumulation: 4 backward calls per optimizer step, zeroed after each step.

This is how large effective batches are trained on small memory. It must not be mistaken for a
forgotten ``zero_grad``.

gradscope should report:
- grad-accumulation (info): accumulation factor 4.
- No missing-zero-grad.

Run: gradscope trace samples/grad_accumulation.py
"""
import torch
from torch import nn

ACCUMULATE = 4


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad(set_to_none=False)  # also works with the default set_to_none=True
    for i in range(12):
        x, y = torch.randn(8, 10), torch.randint(0, 2, (8,))
        loss = nn.functional.cross_entropy(model(x), y) / ACCUMULATE
        loss.backward()
        if (i + 1) % ACCUMULATE == 0:
            opt.step()
            opt.zero_grad(set_to_none=False)


if __name__ == "__main__":
    main()
