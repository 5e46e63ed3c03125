"""``model.head.forward(x)`` called instead of ``model.head(x)``: the module's hooks are skipped.

The classifier's head is pruned with ``torch.nn.utils.prune``, which works through a forward
pre-hook: at every call it recomputes ``head.weight = weight_orig * mask``. Calling
``head.forward(...)`` directly skips that hook, so the head keeps using the ``weight`` made
at pruning time - stale, never updated by the optimizer, and with a graph the first backward
frees - so the second backward fails with "Trying to backward through the graph a second
time". gradscope's own module hooks are skipped too (before, the report named no module).

gradscope should report:
- forward-called-directly (error): explains the failure (exit code 3): ``model.head.forward``
  at line 43 skipped its own hook (prune's ``L1Unstructured``); ``model.body`` and
  ``model.head`` are still named and their ops attributed.

Near miss: samples/forward_super_ok.py (``super().forward(x)`` in a subclass, and a method
other than forward called on purpose).
Run: gradscope trace samples/forward_called_directly.py
"""
import torch
from torch import nn
import torch.nn.utils.prune as prune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.body(x))


def main():
    torch.manual_seed(0)
    model = Net()
    prune.l1_unstructured(model.head, name="weight", amount=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(3):
        opt.zero_grad()
        logits = model.head.forward(model.body(x))  # meant: model.head(...) or model(x)
        criterion(logits, y).backward()
        opt.step()


if __name__ == "__main__":
    main()
