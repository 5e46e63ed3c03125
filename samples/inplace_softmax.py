"""A softmax written by hand, normalised in place: backward fails.

``torch.exp`` saves its output for the backward pass (the gradient of exp is exp). Dividing
that output in place with ``/=`` changes the saved tensor, so autograd stops with "one of the
variables needed for gradient computation has been modified by an inplace operation" and does
not say which line did it.

gradscope should report:
- inplace-modified (error): ``ExpBackward0`` in ``model.attn`` saved the exp output, and the
  in-place division (``div_``) at line 26 changed it; hint: ``w = w / w.sum(...)``.

Run: gradscope trace samples/inplace_softmax.py   (exit code 3: the script fails)
"""
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.qk = nn.Linear(dim, 2 * dim)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, dim=-1)
        w = torch.exp(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5)
        w /= w.sum(-1, keepdim=True)  # the mistake: exp's saved output is overwritten
        return w @ x


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.attn(x).mean(1))


def main():
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 8, 16), torch.randint(0, 2, (4,))
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


if __name__ == "__main__":
    main()
