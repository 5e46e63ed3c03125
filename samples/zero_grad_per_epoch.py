"""``optimizer.zero_grad()`` called once per epoch instead of once per step.

Inside an epoch every step adds its gradient to the ones before it: by the last batch the update
is the sum of all the epoch's gradients.

gradscope should report:
- missing-zero-grad (error): from the second step of each epoch on, gradients carried over from
  before the previous step; up to 4 backward calls summed.

Run: gradscope trace samples/zero_grad_per_epoch.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(4)]
    for epoch in range(2):
        opt.zero_grad()  # the mistake: should be inside the batch loop
        for x, y in batches:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


if __name__ == "__main__":
    main()
