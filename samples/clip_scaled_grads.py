"""Mixed precision: gradients clipped while GradScaler still holds them scaled.

``scaler.scale(loss).backward()`` leaves every gradient multiplied by the loss scale (65536 at
the start). Clipping them before ``scaler.unscale_(opt)`` bounds the *scaled* norm to
``max_norm``; ``scaler.step`` then divides by the scale, so every update is cut to about
``max_norm / 65536``: the loss hardly moves, and nothing fails. torch's AMP notes say to
unscale first; this loop, as it is often written, does not.

gradscope should report:
- clip-grad-order (warning): ``clip_grad_norm_`` at line 33 clips gradients GradScaler still
  holds scaled (no ``scaler.unscale_(opt)`` before it), in 5 of the 6 clipping calls (the
  first comes before the scaler's first step, which tells gradscope which optimizer it steps).

Near miss: samples/step_order_ok.py (``scaler.unscale_(opt)`` before clipping).
Run: gradscope trace samples/clip_scaled_grads.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(6):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        # scaler.unscale_(opt) belongs here
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(opt)
        scaler.update()
        print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
