"""Near miss for the step-order checks: the order torch documents.

zero_grad -> forward -> backward -> clip_grad_norm_ -> optimizer.step() -> scheduler.step(),
with ``GradScaler``'s ``unscale_`` before clipping; and a second training stage with a new
optimizer (fine-tuning after a warm-up), each optimizer stepping many times.

gradscope should report no findings.

Run: gradscope trace samples/step_order_ok.py
"""
import torch
from torch import nn


def train(model, opt, sched, steps, scaler, x, y):
    criterion = nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        scaler.scale(criterion(model(x), y)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    warmup = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, warmup, torch.optim.lr_scheduler.LinearLR(warmup, 0.1, total_iters=4), 4,
          scaler, x, y)
    finetune = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, finetune, torch.optim.lr_scheduler.StepLR(finetune, step_size=2), 4,
          scaler, x, y)


if __name__ == "__main__":
    main()
