"""Near miss for graph-cut: deliberate stop-gradients where every trainable parameter still
trains.

- SimSiam-style: the target branch is ``.detach()``ed, but the same encoder also receives a
  gradient through the predictor branch.
- DQN-style: the target network's output is ``.detach()``ed; the target network is frozen
  (``requires_grad_(False)``) and outside the optimizer.
- Logging: ``loss.item()`` and ``.detach().norm()`` of the features.

gradscope should report no warnings or errors, only:
- tied-weights (info): the encoder runs twice before each backward, as SimSiam means it to.

Run: gradscope trace samples/stop_gradient_ok.py
"""
import copy

import torch
from torch import nn
import torch.nn.functional as F


class SimSiam(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32))
        self.predictor = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))

    def forward(self, x1, x2):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # stop-gradient on the targets: the encoder still learns through p1 and p2
        return -(F.cosine_similarity(p1, z2.detach()).mean()
                 + F.cosine_similarity(p2, z1.detach()).mean()) / 2


def main():
    torch.manual_seed(0)
    model = SimSiam()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(32, 20)
    for step in range(3):
        opt.zero_grad()
        loss = model(x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x))
        loss.backward()
        opt.step()
        print(f"step {step}: {loss.item():.3f}")

    q_net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    target_net = copy.deepcopy(q_net).requires_grad_(False)
    q_opt = torch.optim.Adam(q_net.parameters(), lr=1e-3)
    s, a, r, s2 = torch.randn(16, 8), torch.randint(0, 4, (16,)), torch.randn(16), torch.randn(16, 8)
    for step in range(3):
        q_opt.zero_grad()
        target = r + 0.99 * target_net(s2).max(dim=1).values.detach()
        q = q_net(s).gather(1, a[:, None]).squeeze(1)
        F.smooth_l1_loss(q, target).backward()
        q_opt.step()


if __name__ == "__main__":
    main()
