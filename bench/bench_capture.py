"""Capture cost, in one run: plain forward+backward vs gradscope.trace vs torchviz make_dot.

    python bench/bench_capture.py [--quick] [--out bench/RESULTS-capture.md]

Each configuration runs interleaved (plain, gradscope, torchviz, plain, ...) so machine noise
hits all of them alike; the table gives medians and the ratio to plain forward+backward.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import statistics
import sys
import time

import torch

import gradscope

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from models import GPT, ResNet18, deep_mlp  # noqa: E402

try:
    from torchviz import make_dot
except ImportError:  # bench/run.sh installs it beside the venv, not into it
    make_dot = None
try:
    import torchlens
except ImportError:  # likewise, with numpy, tqdm, pillow, safetensors, packaging
    torchlens = None


def loss_of(out):
    return out.float().mean()


def plain(model, x):
    loss_of(model(x)).backward()
    model.zero_grad(set_to_none=True)


def with_gradscope(model, x):
    gradscope.trace(model, x, loss_fn=loss_of)


def without_op_watch(model, x):
    # The same trace with the TorchFunctionMode (device copies, in-place ops, graph cuts) left
    # out: the difference to the column before is what that mode costs.
    import types

    import gradscope.tracing.capture as capture

    real_watch, real_init = capture.OpWatch, capture.Capture.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.opwatch = None
        self.tracker.direct.nested = False  # (only the op watch looks inside forwards)

    capture.OpWatch = lambda tracker: types.SimpleNamespace(history=types.SimpleNamespace())
    capture.Capture.__init__ = init
    try:
        gradscope.trace(model, x, loss_fn=loss_of)
    finally:
        capture.OpWatch, capture.Capture.__init__ = real_watch, real_init


def with_torchlens(model, x):
    # TorchLens records every op of the forward (no backward); its default keeps activations.
    torchlens.trace(model, x)


def with_torchviz(model, x):
    out = loss_of(model(x))
    make_dot(out, params=dict(model.named_parameters()))


SYNC = lambda: None  # noqa: E731 - torch.cuda.synchronize under --device cuda
AMP = {"enabled": False}  # autocast settings for the current model (bf16 GPT on the GPU)


CLOCK = {"now": time.perf_counter}  # --clock cpu: time.process_time (CPU time of the process)


def timed(fn, *args):
    gc.collect()
    SYNC()
    clock = CLOCK["now"]
    t0 = clock()
    try:
        with torch.autocast(**AMP) if AMP["enabled"] else contextlib.nullcontext():
            fn(*args)
        SYNC()
    except RecursionError:
        return "RecursionError"
    except Exception as e:  # noqa: BLE001 - a peer that cannot handle a model: say so
        return f"fails: {type(e).__name__}"
    return clock() - t0


def bench(name, model, x, reps):
    fns = {"plain fwd+bwd": plain, "gradscope.trace": with_gradscope,
           "without op watch": without_op_watch}
    if make_dot is not None:
        fns["torchviz make_dot"] = with_torchviz
    if torchlens is not None:
        fns["torchlens trace"] = with_torchlens
    plain(model, x)  # warm-up
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(timed(fn, model, x))
    base = statistics.median(times["plain fwd+bwd"])
    row = {"model": name, "plain": base}
    for k, ts in times.items():
        if any(isinstance(t, str) for t in ts):
            row[k] = next(t for t in ts if isinstance(t, str))
        else:
            row[k] = statistics.median(ts)
    report = gradscope.trace(model, x, loss_fn=loss_of)
    row["nodes"] = len(report.graph.nodes)
    return row


def chain_walk(n, reps=1):
    x = torch.zeros(1, requires_grad=True)
    y = x
    for _ in range(n):
        y = y + 1
    out = {}
    for shapes in (False, True):
        ts = []
        for _ in range(reps):
            gc.collect()
            t0 = time.perf_counter()
            g = gradscope.graph_of(y, shapes=shapes)
            ts.append(time.perf_counter() - t0)
            assert len(g.nodes) == n + 1
            del g
        out[shapes] = statistics.median(ts)
    t0 = time.perf_counter()
    try:
        make_dot(y) if make_dot else None
        viz = "ok" if make_dot else "not installed"
    except RecursionError:
        viz = "RecursionError"
    out["torchviz"] = (viz, time.perf_counter() - t0)
    from bench_walk import free_deep  # freeing a touched deep chain overflows the main stack

    holder = [y]
    del y
    free_deep(holder)
    return out


def table_row(name, row):
    """One markdown row: times and their ratio to plain forward+backward."""
    cells = [row[k] if k in row else "not installed"
             for k in ("gradscope.trace", "without op watch", "torchviz make_dot",
                       "torchlens trace")]
    return (f"| {name} | {row['nodes']:,} | {row['plain'] * 1000:.1f} ms | "
            + " | ".join(fmt(c, row["plain"]) for c in cells) + " |")


def fmt(v, base):
    if isinstance(v, str):
        return v
    return f"{v * 1000:.1f} ms ({v / base:.2f}x)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller inputs and fewer repetitions")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for issue 7's GPU sizes")
    ap.add_argument("--only", help="run the models whose name contains this")
    ap.add_argument("--reps", type=int, help="interleaved repetitions (default 7, --quick 3)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: CPU time of the process, steadier than wall time on a shared "
                         "machine (on a CPU it also counts torch's other threads)")
    ap.add_argument("--threads", type=int,
                    help="torch threads (1 with --clock cpu: no idle worker spinning counted)")
    ap.add_argument("--walk", action="store_true",
                    help="also the million-node chain (bench_walk.py measures it properly)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    reps = args.reps or (3 if args.quick else 7)
    if args.clock == "cpu":
        CLOCK["now"] = time.process_time
    if args.device != "cpu":
        return gpu_main(args, reps)
    configs = [
        ("deep MLP, 1000 Linear (batch 32, width 32)", deep_mlp(1000), torch.randn(32, 32)),
        ("deep MLP, 3000 Linear (batch 32, width 32)", deep_mlp(3000), torch.randn(32, 32)),
        ("ResNet-18-like (batch 4, 3x224x224)" if not args.quick else "ResNet-18-like (batch 2, 3x112x112)",
         ResNet18(), torch.randn(4, 3, 224, 224) if not args.quick else torch.randn(2, 3, 112, 112)),
        ("GPT-2-small-like, 12 layers d=768 (batch 2, seq 128)" if not args.quick else "GPT-2-small-like, 12 layers d=768 (batch 1, seq 32)",
         GPT(), torch.randint(0, 50257, (2, 128) if not args.quick else (1, 32))),
    ]
    lines = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
             f"torch threads, torch {torch.__version__}, Python {platform.python_version()}; "
             f"{reps} interleaved repetitions, medians of {args.clock} time.", "",
             "| model | autograd nodes | plain fwd+bwd | gradscope.trace | gradscope.trace "
             "without the op watch | torchviz make_dot | TorchLens trace |",
             "|---|---|---|---|---|---|---|"]
    for name, model, x in configs:
        if args.only and args.only not in name:
            continue
        row = bench(name, model, x, reps)
        lines.append(table_row(name, row))
        print(lines[-1], flush=True)
    if args.walk:
        n = 200_000 if args.quick else 1_000_000
        walk = chain_walk(n)
        lines += ["", f"Walking a {n:,}-node chain (`y = y + 1` repeated): "
                  f"structure only (`graph_of(y, shapes=False)`) {walk[False]:.2f} s, "
                  f"with shapes, dtypes and saved tensors (`graph_of(y)`) {walk[True]:.2f} s; "
                  f"torchviz make_dot: {walk['torchviz'][0]}."]
        print(lines[-1])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


def gpu_main(args, reps):
    """Issue 7's GPU run: ResNet-18-like (batch 64, fp32) and GPT-2-small-like (batch 8, seq
    512, bf16 autocast); every timing ends with torch.cuda.synchronize()."""
    global SYNC
    dev = torch.device(args.device)
    SYNC = torch.cuda.synchronize
    configs = [
        ("ResNet-18-like (batch 64, 3x224x224, fp32)", ResNet18(),
         torch.randn(64, 3, 224, 224), None),
        ("GPT-2-small-like (batch 8, seq 512, bf16 autocast)", GPT(),
         torch.randint(0, 50257, (8, 512)), torch.bfloat16),
    ]
    lines = [f"GPU: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}; {reps} "
             "interleaved repetitions, medians.", "",
             "| model | autograd nodes | plain fwd+bwd | gradscope.trace | gradscope.trace "
             "without the op watch | torchviz make_dot | TorchLens trace |",
             "|---|---|---|---|---|---|---|"]
    for name, model, x, amp in configs:
        AMP.clear()
        AMP.update({"device_type": "cuda", "dtype": amp, "enabled": amp is not None})
        row = bench(name, model.to(dev), x.to(dev), reps)
        lines.append(table_row(name, row))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
