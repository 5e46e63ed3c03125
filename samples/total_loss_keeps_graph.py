"""A graph kept alive across steps: ``total_loss += loss`` for the epoch average.

``loss`` is a tensor with the step's autograd graph behind it; adding it to ``total_loss`` chains
that graph onto every earlier one, so the history (and the memory it holds) grows with every
step for the whole epoch - the PyTorch FAQ's first "my memory keeps growing" entry.

gradscope should report:
- graph-kept-alive (warning): ``total_loss`` (a local of train_epoch()) at line 27, with the
  growth in autograd nodes per step, and the fix ``total_loss += loss.item()``.

Near miss: samples/loss_item_ok.py (``loss.item()``, ``loss.detach()``, micro-batch losses summed
before one backward).
Run: gradscope trace samples/total_loss_keeps_graph.py
"""
import torch
from torch import nn


def train_epoch(model, opt, batches):
    criterion = nn.CrossEntropyLoss()
    total_loss = 0.0
    for x, y in batches:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        total_loss += loss  # should be loss.item()
    return total_loss / len(batches)


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(12)]
    print("epoch loss", float(train_epoch(model, opt, batches)))


if __name__ == "__main__":
    main()
