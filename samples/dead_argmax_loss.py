"""Dead training: the loss is built from ``argmax`` of the model's output.

``argmax`` returns integer class indices: they carry no gradient, so the error rate computed
from them is a constant as far as autograd is concerned. ``loss.requires_grad_()`` makes
backward run anyway, on a leaf, and Adam never moves a weight.

gradscope should report:
- dead-training (error): all 3 steps of Adam updated nothing; the cause names the ``argmax``
  at line 35 and the ``requires_grad_()`` at line 37.

Near miss: samples/no_grad_eval_ok.py (argmax for an accuracy metric beside a real loss).
Run: gradscope trace samples/dead_argmax_loss.py
"""
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.body(x))


def main():
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(3):
        opt.zero_grad()
        pred = model(x).argmax(dim=1)
        loss = (pred != y).float().mean()  # the error rate: what we want to minimise
        loss.requires_grad_()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
