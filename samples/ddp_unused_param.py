"""DistributedDataParallel with a parameter the loss never uses.

DDP waits for a gradient of every parameter before it all-reduces; ``aux`` never gets one, so the
second iteration fails with "Expected to have finished reduction in the prior iteration..."
— without saying which parameters (unless TORCH_DISTRIBUTED_DEBUG=DETAIL is set). gradscope
names them.

    gradscope trace --nproc-per-node 2 samples/ddp_unused_param.py

gradscope should report:
- unused-parameter (warning): ``aux.weight``, ``aux.bias`` never received a gradient; mentions
  ``find_unused_parameters=True``.
- The script itself fails on its second step (exit code 3) with DDP's error.
"""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 16)
        self.head = nn.Linear(16, 3)
        self.aux = nn.Linear(16, 3)  # an auxiliary head the loss no longer uses

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def main():
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29612"))
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = DDP(Net())  # find_unused_parameters=False (the default)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(dist.get_rank())
    try:
        for step in range(3):
            opt.zero_grad()
            x, y = torch.randn(8, 10, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
