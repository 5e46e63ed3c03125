"""Step order: ``lr_scheduler.step()`` before ``optimizer.step()``.

Since PyTorch 1.1 the scheduler steps after the optimizer. Called first, the schedule skips its
first value: the warm-up learning rate is never used and every update runs one step ahead of
the schedule (torch prints a warning once, easy to miss in a long log).

gradscope should report:
- scheduler-before-step (warning): ``StepLR.step()`` at line 28 before the first
  ``AdamW.step()`` (line 29); the initial learning rate 0.001 was never used.

Near miss: samples/step_order_ok.py (scheduler after the optimizer).
Run: gradscope trace samples/scheduler_before_step.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(4):
        opt.zero_grad()
        criterion(model(x), y).backward()
        sched.step()
        opt.step()


if __name__ == "__main__":
    main()
