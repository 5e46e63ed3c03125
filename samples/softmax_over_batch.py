"""An op that silently does the wrong thing: ``log_softmax`` over the batch dimension.

``F.log_softmax(logits, dim=0)`` on ``(N, C)`` logits normalises each class over the 64
samples of the batch instead of each sample over its 5 classes. ``nll_loss`` trains on it
without complaint; predictions then depend on which other samples share the batch.

gradscope should report:
- softmax-batch-dim (error): ``log_softmax`` over dim 0 of the 64x5 output of ``model.2`` at
  line 27, with the fix ``dim=1``.

Near miss: samples/softmax_dim_ok.py (class softmax over dim 1; attention pooling over the
sequence axis, followed by a layer).
Run: gradscope trace samples/softmax_over_batch.py
"""
import torch
from torch import nn
import torch.nn.functional as F


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(3):
        opt.zero_grad()
        log_probs = F.log_softmax(model(x), dim=0)
        F.nll_loss(log_probs, y).backward()
        opt.step()


if __name__ == "__main__":
    main()
