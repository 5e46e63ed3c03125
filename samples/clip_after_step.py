"""Step order: gradients clipped after ``optimizer.step()``.

The update has already used the unclipped gradients when ``clip_grad_norm_`` runs, and the
next ``zero_grad()`` throws the clipped ones away: the clipping never does anything, so the
spikes it was added for still reach the weights.

gradscope should report:
- clip-grad-order (warning): ``clip_grad_norm_`` at line 28 runs after ``SGD.step()`` at line
  27, in all 4 clipping calls.

Near miss: samples/step_order_ok.py (clipping between backward and step).
Run: gradscope trace samples/clip_after_step.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(64, 20), torch.randn(64, 1)
    for step in range(4):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)


if __name__ == "__main__":
    main()
