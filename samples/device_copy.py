"""Seed 004 ("moving data between GPU and CPU is slow"): a copy inside every forward.

The positions are built on the CPU and copied to the accelerator on every call. The batch
itself is moved before the forward, which is normal and must not be reported, and so is the
loss read with ``.item()`` for logging, outside the forward. (Without a GPU, the ``meta``
device stands in for the accelerator; it has no data to read back, so the logging is skipped.)

gradscope should report:
- device-copy (warning): ``model`` copies a tensor from cpu to the accelerator once per forward
  (``torch.arange(...).to(ids.device)`` at line 29), with the bytes moved; hint: create it
  there with ``device=ids.device``.

Run: gradscope trace samples/device_copy.py
"""
import torch
from torch import nn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "meta")


class Tagger(nn.Module):
    def __init__(self, vocab=100, dim=32, tags=5, max_len=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.out = nn.Linear(dim, tags)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1]).to(ids.device)  # built on the CPU every call
        h = self.tok(ids) + self.pos(positions)
        return self.out(h)


def main():
    torch.manual_seed(0)
    model = Tagger().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        ids = torch.randint(0, 100, (4, 16)).to(DEVICE)  # moving the batch: fine
        tags = torch.randint(0, 5, (4, 16)).to(DEVICE)
        opt.zero_grad()
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tags.flatten())
        loss.backward()
        opt.step()
        if DEVICE.type != "meta":
            print(f"loss {loss.item():.3f}")  # a read outside the forward: fine


if __name__ == "__main__":
    main()
