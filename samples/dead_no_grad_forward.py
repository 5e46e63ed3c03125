"""Dead training: the training forward runs under ``torch.no_grad()``, and the error that
follows was silenced with ``loss.requires_grad = True``.

Without that line, ``loss.backward()`` fails with "element 0 of tensors does not require grad
and does not have a grad_fn". With it, backward runs on a leaf, no parameter gets a gradient,
and SGD steps over and over without changing a weight: the loss never moves.

gradscope should report:
- dead-training (error): all 4 steps of SGD updated nothing; the cause names the forward under
  ``torch.no_grad()`` (line 30) and the ``requires_grad = True`` line (32).
- a note that the backward calls had no graph to draw (not "no backward() call was seen").

Near miss: samples/no_grad_eval_ok.py (no_grad for evaluation only).
Run: gradscope trace samples/dead_no_grad_forward.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(4):
        opt.zero_grad()
        # "we don't need gradients for the forward" - but backward needs its history
        with torch.no_grad():
            logits = model(x)
        loss = criterion(logits, y)
        loss.requires_grad = True  # added to silence "does not require grad"
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}")  # the same value every step


if __name__ == "__main__":
    main()
