"""Near miss for softmax-batch-dim: softmax where dim 0 is right, and class softmax on dim 1.

- Attention pooling over the time axis of an ``(L, N, D)`` sequence: ``softmax(scores, dim=0)``
  weighs time steps, and a Linear classifier follows.
- The class distribution: ``log_softmax(logits, dim=1)`` into ``nll_loss``.

gradscope should report no findings.

Run: gradscope trace samples/softmax_dim_ok.py
"""
import torch
from torch import nn
import torch.nn.functional as F


class AttnPool(nn.Module):
    def __init__(self, d=16, classes=5):
        super().__init__()
        self.score = nn.Linear(d, 1)
        self.head = nn.Linear(d, classes)

    def forward(self, seq):                              # (L, N, D), time first
        weights = F.softmax(self.score(seq), dim=0)      # over the L time steps
        pooled = (weights * seq).sum(dim=0)              # (N, D)
        return F.log_softmax(self.head(pooled), dim=1)   # over the classes


def main():
    torch.manual_seed(0)
    model = AttnPool()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seq, y = torch.randn(12, 32, 16), torch.randint(0, 5, (32,))
    for step in range(3):
        opt.zero_grad()
        F.nll_loss(model(seq), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
