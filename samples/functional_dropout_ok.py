"""Near miss for dropout-ignores-eval: functional dropout that follows the module's mode.

- ``F.dropout(x, p, training=self.training)``,
- an ``nn.Dropout`` submodule,
- attention dropout written the nanoGPT way:
  ``scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)``.

gradscope should report no findings.

Run: gradscope trace samples/functional_dropout_ok.py
"""
import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d=32, p=0.1):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.drop = nn.Dropout(p)
        self.p = p

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0,
                                           is_causal=True)
        y = F.dropout(self.proj(y), self.p, training=self.training)
        return self.drop(x + y)


def main():
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(32, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 16, 32), torch.randint(0, 10, (4, 16))
    for step in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).reshape(-1, 10), y.reshape(-1)).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model(x)


if __name__ == "__main__":
    main()
