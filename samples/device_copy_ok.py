"""Near miss for device-copy: the same tagger written without copies inside the forward.

The positions are created on the input's device, the batch is moved before the forward, and
the loss is read with ``.item()`` for logging outside the forward: none of it is a copy made by
the model. (Without a GPU, the ``meta`` device stands in for the accelerator.)

gradscope should report: nothing.

Run: gradscope trace samples/device_copy_ok.py
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
        positions = torch.arange(ids.shape[1], device=ids.device)  # made where it is used
        return self.out(self.tok(ids) + self.pos(positions))


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
