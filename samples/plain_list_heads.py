"""Multi-task heads kept in a plain Python list: their weights are invisible to the model.

``self.heads = [nn.Linear(...), ...]`` is a plain list, so PyTorch never registers the heads:
``model.parameters()`` (and so the optimizer) and ``state_dict()`` miss them, and the heads keep
their random initial weights however long you train.

gradscope should report:
- plain-container (error): ``model.heads`` is a plain list holding 3 Linear modules; hint
  ``nn.ModuleList``, with the line of ``self.heads = [...]``.
- unregistered-parameter (error): ``heads[0].weight``, ``heads[0].bias``, ... feed the loss but
  are not parameters of ``model``.

Run: gradscope trace samples/plain_list_heads.py
"""
import torch
from torch import nn


class MultiTask(nn.Module):
    def __init__(self, tasks=3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.heads = [nn.Linear(32, 2) for _ in range(tasks)]  # should be nn.ModuleList

    def forward(self, x):
        h = self.trunk(x)
        return torch.stack([head(h) for head in self.heads], dim=1)


def main():
    torch.manual_seed(0)
    model = MultiTask()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # only the trunk's 544 parameters
    x, y = torch.randn(8, 16), torch.randint(0, 2, (8, 3))
    for step in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1))
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
