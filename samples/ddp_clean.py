"""A clean DistributedDataParallel loop (gloo on CPU; NCCL works the same on GPUs).

Run it on two ranks with gradscope tracing each and merging their reports:

    gradscope trace --nproc-per-node 2 samples/ddp_clean.py --out report/

or launch it yourself with ``torchrun --nproc-per-node 2 samples/ddp_clean.py`` and
``gradscope.watch`` inside (see ``--self-watch``), then ``gradscope merge 'trace.rank*.json'``.
It also runs as a single process (world size 1).

gradscope should report:
- grad-accumulation (info): the loop accumulates over 2 micro-batches, the first under
  ``model.no_sync()``: deliberate, not a missing zero_grad.
- Nothing else: parameter names without DDP's ``module.`` prefix, identical gradients on all ranks.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def setup():
    if "RANK" not in os.environ:  # plain `python ddp_clean.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29611"))
    dist.init_process_group("gloo")
    return dist.get_rank()


def train(model, opt, rank, steps=3):
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    for step in range(steps):
        opt.zero_grad()
        x1, x2 = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
        y1, y2 = torch.randint(0, 3, (8,), generator=gen), torch.randint(0, 3, (8,), generator=gen)
        with model.no_sync():  # accumulate locally, all-reduce once with the second batch
            nn.functional.cross_entropy(model(x1), y1).backward()
        nn.functional.cross_entropy(model(x2), y2).backward()
        opt.step()


def main():
    rank = setup()
    torch.manual_seed(0)  # same initial weights on every rank
    model = DDP(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if "--self-watch" in sys.argv:
        import gradscope

        with gradscope.watch(model, opt) as scope:
            train(model, opt, rank)
        scope.report().save(f"trace.rank{rank}.json")
    else:
        train(model, opt, rank)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
