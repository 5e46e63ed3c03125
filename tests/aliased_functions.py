"""A module that imports torch functions by name, before any trace runs (test_opwatch_parity)."""
import torch
from torch import nn
from torch import softmax as torch_softmax
from torch.nn.functional import cross_entropy, dropout, mse_loss, softmax


class Aliased(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = dropout(self.fc(x), 0.1)       # F.dropout by name: keeps dropping in eval
        p = softmax(h, dim=0)              # over the batch dimension
        q = torch_softmax(h, 0)
        loss = cross_entropy(p, torch.zeros(8, dtype=torch.long))  # softmax fed to CE
        return loss + mse_loss(q, torch.zeros(8, 1))               # (8, 3) against (8, 1)
