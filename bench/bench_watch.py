"""Training-step cost of gradscope.watch, measured directly, in one run.

    python bench/bench_watch.py [--scale 1.0] [--device cpu] [--out bench/RESULTS-watch.md]

Four models: two where the step is long (ResNet-18-like, GPT-2-small-like) and two where it is
short and gradscope's fixed costs per module, parameter and step dominate (a 20-layer MLP of
width 64, a 2-layer transformer with d=64).

Three kinds of blocks alternate: plain steps; watched steps; watched steps with gradscope's
own-time counter on (``gradscope.tracing.selftime``: the time spent inside every hook and step
record of ours, outermost call only). A new watch session starts each watched block; its first
WARMUP steps (hook installation, the graph walk of the first backward, max-abs read every step)
are reported apart. Per step the wall time and the CPU time of the process are recorded.

Figures per model, all from this one run:

- *own time*: median over counted steps of gradscope's time inside its hooks and step code,
  as a share of the median plain step (wall); and its mean, which also carries the costlier
  steps: in a steady loop each 64th (gradient norms and max-abs read, its forwards recorded
  in full) and the one after it, the records of idle steps written before it, and a session's
  first light forward and its keep-alive looks (denser at a session's start). The direct
  measure: no difference of two noisy medians. It leaves out torch's side of calling each
  Python hook, which the CPU overhead has.
- *own time in one long session*: the mean over as many steps as each kind above, after the
  warm-up, in one session: what a training run pays per step once under way, where the
  blocks' sessions restart every block.
- *CPU overhead*: median CPU time of a watched step (counter off) over that of a plain step,
  minus one: everything the watch adds, torch's hook dispatch included, with less of the
  other jobs on a shared machine than wall time has.
- *wall overhead*: the same with wall time (what the old table gave; the noisiest).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time

import torch
from torch import nn

import gradscope

try:
    from gradscope.tracing import selftime
except ImportError:  # an older gradscope (the "before" run): no own-time counter
    selftime = None

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from models import GPT, ResNet18, deep_mlp  # noqa: E402

WARMUP = 8  # first steps of each session: hooks, first graph walk, dense max-abs reads


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


def timed_steps(step, n: int, count: bool = False) -> list:
    """(wall s, CPU s, own ns) of each of ``n`` steps."""
    out = []
    own = selftime.totals if selftime is not None else (lambda: (0, 0))
    for _ in range(n):
        own0 = own()[0]
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        c1, w1 = time.process_time(), time.perf_counter()
        out.append((w1 - w0, c1 - c0, own()[0] - own0 if count else 0))
    return out


def interleaved(step, model, opt, steps: int, block: int) -> dict:
    """Blocks of plain, watched and watched-and-counted steps, alternating, ``steps`` each."""
    runs = {"plain": [], "watched": [], "counted": [], "warmup": [], "close": []}
    while len(runs["plain"]) < steps:
        runs["plain"] += timed_steps(step, block)
        for kind in ("watched", "counted"):
            if kind == "counted" and selftime is not None:
                selftime.reset()
            session = gradscope.watch(model, opt)
            session.__enter__()
            try:
                runs["warmup"] += timed_steps(step, WARMUP)
                runs[kind] += timed_steps(step, block, count=kind == "counted")
            finally:
                t0 = time.process_time()
                session.__exit__(None, None, None)  # the report is built here, once
                runs["close"].append(time.process_time() - t0)
                if selftime is not None:
                    selftime.stop()
    return runs


def one_session(step, model, opt, steps: int) -> list:
    """One watch session of WARMUP + ``steps`` steps, own time counted after the warm-up: what
    a training run pays per step once it is under way (the blocks above start a session every
    ``block`` steps, so each of their means also carries a session's first light forward and
    the denser looks of its first steps)."""
    if selftime is None:
        return []
    selftime.reset()
    session = gradscope.watch(model, opt)
    session.__enter__()
    try:
        timed_steps(step, WARMUP)
        return timed_steps(step, steps, count=True)
    finally:
        session.__exit__(None, None, None)
        selftime.stop()


def median(rows: list, k: int) -> float:
    return statistics.median(r[k] for r in rows)


def bench(name, model, x, y, steps, block, amp=None) -> str:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = make_step(model, opt, x, y, amp)
    for _ in range(3):
        step()  # warm-up
    r = interleaved(step, model, opt, steps, block)
    long = one_session(step, model, opt, steps)
    plain_wall, plain_cpu = median(r["plain"], 0), median(r["plain"], 1)
    own = median(r["counted"], 2) / 1e9 if selftime is not None else math.nan
    # the mean shows what the median cannot: the costlier steps (in a steady loop every 64th,
    # which reads the norms and records its forwards in full, and the wake before it)
    own_mean = statistics.mean(c[2] for c in r["counted"]) / 1e9 if selftime is not None \
        else math.nan
    long_mean = statistics.mean(c[2] for c in long) / 1e9 if long else math.nan
    cpu = median(r["watched"], 1) / plain_cpu - 1
    wall = median(r["watched"], 0) / plain_wall - 1
    warm = statistics.mean(w for w, _, _ in r["warmup"]) / plain_wall - 1
    return (f"| {name} | {len(r['plain'])} / {len(r['watched'])} / {len(r['counted'])} | "
            f"{plain_wall * 1000:.2f} ms | {own * 1e6:.0f} us = **{own / plain_wall * 100:.2f}%** "
            f"| {own_mean * 1e6:.0f} us = **{own_mean / plain_wall * 100:.2f}%** "
            f"| {long_mean * 1e6:.0f} us = **{long_mean / plain_wall * 100:.2f}%** ({len(long)}) "
            f"| {cpu * 100:+.2f}% | {wall * 100:+.2f}% | {warm * 100:+.1f}% | "
            f"{statistics.median(r['close']) * 1000:.0f} ms |")


def configs(dev: torch.device, scale: float) -> list:
    """(name, model, input, target, autocast dtype, steps per kind, block size)."""
    def n(k: int) -> int:
        return max(2, int(k * scale))
    small_gpt = dict(vocab=512, d=64, heads=4, layers=2, max_len=64)
    if dev.type == "cuda":  # the sizes issue 7 asks for
        return [
            ("ResNet-18-like, batch 64, 3x224x224, fp32", ResNet18(),
             torch.randn(64, 3, 224, 224), torch.randint(0, 1000, (64,)), None, n(40), n(10)),
            ("GPT-2-small-like, batch 8, seq 512, bf16 autocast", GPT(),
             torch.randint(0, 50257, (8, 512)), torch.randint(0, 50257, (8, 512)),
             torch.bfloat16, n(40), n(10)),
            ("MLP, 20 Linear of width 64, batch 32", nn.Sequential(deep_mlp(20, 64),
                                                                   nn.Linear(64, 10)),
             torch.randn(32, 64), torch.randint(0, 10, (32,)), None, n(600), n(50)),
            ("transformer, 2 layers d=64, batch 8, seq 32", GPT(**small_gpt),
             torch.randint(0, 512, (8, 32)), torch.randint(0, 512, (8, 32)), None,
             n(600), n(50)),
        ]
    return [
        ("ResNet-18-like, batch 4, 3x224x224", ResNet18(), torch.randn(4, 3, 224, 224),
         torch.randint(0, 1000, (4,)), None, n(30), n(10)),
        ("GPT-2-small-like, batch 2, seq 128", GPT(), torch.randint(0, 50257, (2, 128)),
         torch.randint(0, 50257, (2, 128)), None, n(20), n(10)),
        ("MLP, 20 Linear of width 64, batch 32", nn.Sequential(deep_mlp(20, 64),
                                                               nn.Linear(64, 10)),
         torch.randn(32, 64), torch.randint(0, 10, (32,)), None, n(1000), n(100)),
        ("transformer, 2 layers d=64, batch 8, seq 32", GPT(**small_gpt),
         torch.randint(0, 512, (8, 32)), torch.randint(0, 512, (8, 32)), None,
         n(600), n(50)),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    ap.add_argument("--steps", type=int, help="steps of each kind for every model (else per model)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (issue 7's GPU sizes)")
    ap.add_argument("--only", help="run the models whose name contains this")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    # Denormal floats appear after ~17 AdamW steps of the GPT-like model here and make each
    # step several times slower (0.75 s -> 5 s at 2 layers): with them, step times drift
    # by more than any overhead, whatever is watched. Flushed to zero, they are stationary.
    torch.set_flush_denormal(True)
    dev = torch.device(args.device)
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
             else f"{platform.machine()}, {torch.get_num_threads()} torch threads")
    lines = [f"Machine: {where}, torch {torch.__version__}; AdamW training steps "
             f"(zero_grad, forward, cross-entropy, backward, step); denormals flushed to zero.",
             "",
             "| model | steps (plain / watched / counted) | plain step (median, wall) | "
             "gradscope's own time per step: median | mean, sessions of one block | "
             "mean, one long session (its steps) | CPU overhead (median) | "
             "wall overhead (median) | first 8 steps of a session (mean, wall) | "
             "session close + report (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name, model, x, y, amp, steps, block in configs(dev, args.scale):
        if args.only and args.only not in name:
            continue
        model, x, y = model.to(dev), x.to(dev), y.to(dev)
        if args.steps:
            steps, block = args.steps, min(block, args.steps)
        lines.append(bench(name, model, x, y, steps, block, amp))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
