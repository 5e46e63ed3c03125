"""Training-step cost of gradscope.watch, in one run: plain step vs watched step.

    python bench/bench_watch.py [--steps 20] [--out bench/RESULTS-watch.md]

Blocks of 10 plain steps and of 18 watched steps alternate (a new watch session per block). The
first 8 steps of each session are its warm-up: they pay the one-time costs (hooks, the graph walk
of the first backward) and read every gradient's max-abs each step; the median is over the steps
after them. The mean over *all* watched steps, warm-up included, is given too.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from models import GPT, ResNet18  # noqa: E402
from paired import plain_and_watched  # noqa: E402



def make_step(model, opt, x, y):
    def step():
        opt.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1)).backward()
        opt.step()
    return step


def bench(name, model, x, y, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = make_step(model, opt, x, y)
    step()  # warm-up
    plain, watched, every = plain_and_watched(step, model, opt, steps)
    mp, mw = statistics.median(plain), statistics.median(watched)
    mean_all = statistics.mean(every) / statistics.mean(plain) - 1
    return (f"| {name} | {len(plain)} + {len(watched)} | {mp * 1000:.1f} ms | {mw * 1000:.1f} ms | "
            f"{(mw / mp - 1) * 100:+.1f}% | {mean_all * 100:+.1f}% |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch "
             f"{torch.__version__}; AdamW training steps.", "",
             "| model | steps (plain + watched) | plain step (median) | watched step (median) | "
             "overhead (median, after warm-up) | overhead (mean of all watched steps) |",
             "|---|---|---|---|---|---|"]
    configs = [
        ("ResNet-18-like, batch 4, 3x224x224", ResNet18(), torch.randn(4, 3, 224, 224),
         torch.randint(0, 1000, (4,))),
        ("GPT-2-small-like, batch 2, seq 128", GPT(), torch.randint(0, 50257, (2, 128)),
         torch.randint(0, 50257, (2, 128))),
    ]
    for name, model, x, y in configs:
        lines.append(bench(name, model, x, y, args.steps))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
