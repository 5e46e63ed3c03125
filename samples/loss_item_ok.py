"""Near miss for graph-kept-alive: the correct ways to keep a running loss.

- ``total += loss.item()`` (a Python number),
- ``history.append(loss.detach())`` (a tensor without history),
- an EMA of ``loss.item()``,
- gradient accumulation that sums the micro-batch losses first and calls backward once.

gradscope should report no warnings or errors, only:
- tied-weights (info): the model runs 4 times (micro-batches) before each backward.

Run: gradscope trace samples/loss_item_ok.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    total, ema, history = 0.0, None, []
    for step in range(10):
        opt.zero_grad()
        micro = []
        for _ in range(4):  # micro-batches: their losses summed, one backward
            x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
            micro.append(criterion(model(x), y))
        loss = torch.stack(micro).mean()
        loss.backward()
        opt.step()
        total += loss.item()
        history.append(loss.detach())
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
    print(f"mean {total / 10:.3f} ema {ema:.3f} last {history[-1].item():.3f}")


if __name__ == "__main__":
    main()
