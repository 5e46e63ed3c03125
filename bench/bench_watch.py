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



def make_step(model, opt, x, y, amp=None):
    device = x.device.type
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad()
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            out = model(x)
            loss = nn.functional.cross_entropy(out.reshape(-1, out.size(-1)).float(),
                                               y.reshape(-1))
        loss.backward()
        opt.step()
        sync()  # the step's time includes the device's work, as a training loop would see
    return step


def bench(name, model, x, y, steps, amp=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = make_step(model, opt, x, y, amp)
    step()  # warm-up
    plain, watched, every = plain_and_watched(step, model, opt, steps)
    mp, mw = statistics.median(plain), statistics.median(watched)
    mean_all = statistics.mean(every) / statistics.mean(plain) - 1
    return (f"| {name} | {len(plain)} + {len(watched)} | {mp * 1000:.1f} ms | {mw * 1000:.1f} ms | "
            f"{(mw / mp - 1) * 100:+.1f}% | {mean_all * 100:+.1f}% |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (issue 7's GPU sizes)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
             else f"{platform.machine()}, {torch.get_num_threads()} torch threads")
    lines = [f"Machine: {where}, torch {torch.__version__}; AdamW training steps.", "",
             "| model | steps (plain + watched) | plain step (median) | watched step (median) | "
             "overhead (median, after warm-up) | overhead (mean of all watched steps) |",
             "|---|---|---|---|---|---|"]
    if dev.type == "cuda":  # the sizes issue 7 asks for
        configs = [
            ("ResNet-18-like, batch 64, 3x224x224, fp32", ResNet18(),
             torch.randn(64, 3, 224, 224), torch.randint(0, 1000, (64,)), None),
            ("GPT-2-small-like, batch 8, seq 512, bf16 autocast", GPT(),
             torch.randint(0, 50257, (8, 512)), torch.randint(0, 50257, (8, 512)),
             torch.bfloat16),
        ]
    else:
        configs = [
            ("ResNet-18-like, batch 4, 3x224x224", ResNet18(), torch.randn(4, 3, 224, 224),
             torch.randint(0, 1000, (4,)), None),
            ("GPT-2-small-like, batch 2, seq 128", GPT(), torch.randint(0, 50257, (2, 128)),
             torch.randint(0, 50257, (2, 128)), None),
        ]
    for name, model, x, y, amp in configs:
        model, x, y = model.to(dev), x.to(dev), y.to(dev)
        lines.append(bench(name, model, x, y, args.steps, amp))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
