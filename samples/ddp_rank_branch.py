"""Rank-dependent code in the training step: gradient clipping only on rank 0.

The ``if rank == 0`` was meant for logging, but the clipping slipped inside it: after DDP's
all-reduce every rank holds the same gradients, then rank 0 clips them and the others do not,
so the replicas' weights drift apart step by step.

    gradscope trace --nproc-per-node 2 samples/ddp_rank_branch.py

gradscope should report:
- rank-divergence (error): after the all-reduce, the ranks hold different gradients (with 2 ranks;
  a single process has nothing to compare).
"""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29613"))
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(rank)
    for step in range(3):
        opt.zero_grad()
        x, y = torch.randn(16, 10, generator=gen), torch.randn(16, 1, generator=gen)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f}")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)  # the bug: rank 0 only
        opt.step()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
