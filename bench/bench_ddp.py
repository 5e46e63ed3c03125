"""Watched vs plain DistributedDataParallel training step, 2 gloo ranks on CPU, in one run.

    python -m torch.distributed.run --nproc-per-node 2 bench/bench_ddp.py [--out FILE]

Blocks of 10 plain steps and 18 watched steps alternate on every rank (a new watch session per
block; its first 8 steps are warm-up). Rank 0 prints medians.
"""
import argparse
import statistics
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from models import ResNet18  # noqa: E402
from paired import plain_and_watched  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(ResNet18(classes=10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(4, 3, 112, 112, generator=gen), torch.randint(0, 10, (4,), generator=gen)

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    plain, watched, _ = plain_and_watched(step, model, opt, args.steps)
    if rank == 0:
        mp, mw = statistics.median(plain), statistics.median(watched)
        line = (f"| ResNet-18-like, batch 4 per rank, 3x112x112, 2 gloo ranks | "
                f"{len(plain)} + {len(watched)} | {mp * 1000:.1f} ms | {mw * 1000:.1f} ms | "
                f"{(mw / mp - 1) * 100:+.1f}% |")
        print(line, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write(line + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
