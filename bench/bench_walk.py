"""The million-node walk against bare breadth-first walks, and its JSON, in one run.

    python bench/bench_walk.py [--nodes 1000000] [--reps 5] [--out bench/RESULTS-walk.md]

Two graphs: a chain (``y = y + 1`` repeated, every node reached once) and a recurrence that
reuses one weight and a skip path at every step (most edges reach a node seen before). Every
measurement is CPU time (``time.process_time``) of this process, so another job on the machine
slows it less than wall time; the configurations run interleaved (bare, gradscope, bare, ...),
each walk on a freshly built graph, and the table gives medians and ratios within this run.

The baselines, all iterative and run with the cyclic collector paused (as the walk runs):

- *bare BFS, id() set*: the walk as one first writes it (``seen = {id(fn)}``, a list as queue);
- *bare BFS, object set*: the fastest bare walk found here (the autograd wrappers themselves in
  a set: their hash is a rotated address, which a set spreads well; ``id()`` ints crowd it);
- *bare BFS + metadata reads*: the object-set walk that also reads every node's
  ``_input_metadata`` shape, dtype and device and keeps them: the floor for a walk with shapes,
  since torch offers no cheaper way to read them.
- *bare BFS + metadata + saved reads*: that walk, also reading every tensor a node saved for
  backward the way any reader must (its ``_raw_saved_*`` first: a tensor held by saved-tensor
  hooks must not be unpacked, that would re-run a checkpointed forward), with its storage,
  size, shape and dtype: the floor for ``graph_of()``'s saved-activation memory. (The chain
  saves nothing; the recurrence saves about one tensor per node.)
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import threading
import time

import torch

import gradscope
from gradscope.tracedata import Trace


def chain(n: int) -> torch.Tensor:
    y = torch.zeros(1, requires_grad=True)
    for _ in range(n):
        y = y + 1
    return y


def recurrence(n: int) -> torch.Tensor:
    """About ``n`` nodes: h = tanh(h @ w) + skip, skip = h * 0.5, one shared weight."""
    w = torch.randn(4, 4, requires_grad=True)
    h = torch.randn(1, 4, requires_grad=True)
    skip = h
    for _ in range(n // 4):
        h = torch.tanh(h @ w) + skip
        skip = h * 0.5
    return h


def bare_id_set(root: torch.Tensor) -> int:
    fns, seen = [root.grad_fn], {id(root.grad_fn)}
    i = 0
    while i < len(fns):
        fn = fns[i]
        i += 1
        for nf, _ in fn.next_functions:
            if nf is not None and id(nf) not in seen:
                seen.add(id(nf))
                fns.append(nf)
    return len(fns)


def bare_object_set(root: torch.Tensor) -> int:
    fns, seen = [root.grad_fn], {root.grad_fn}
    for fn in fns:
        for nf, _ in fn.next_functions:
            if nf is not None and nf not in seen:
                seen.add(nf)
                fns.append(nf)
    return len(fns)


def bare_with_metadata(root: torch.Tensor) -> int:
    fns, seen, meta = [root.grad_fn], {root.grad_fn}, []
    for fn in fns:
        m = fn._input_metadata[0]
        meta.append((m.shape, m.dtype, m.device))
        for nf, _ in fn.next_functions:
            if nf is not None and nf not in seen:
                seen.add(nf)
                fns.append(nf)
    return len(fns)


def bare_with_saved(root: torch.Tensor) -> int:
    fns, seen, meta, saved, names = [root.grad_fn], {root.grad_fn}, [], [], {}
    for fn in fns:
        m = fn._input_metadata[0]
        meta.append((m.shape, m.dtype, m.device))
        fields = names.get(type(fn))
        if fields is None:
            attrs = set(dir(fn))
            fields = names[type(fn)] = [(a, "_raw" + a) for a in sorted(attrs)
                                        if a.startswith("_saved_") and "_raw" + a in attrs]
        for attr, raw in fields:
            if getattr(fn, raw).unpack_hook is None:
                t = getattr(fn, attr)
                if t is not None:  # (an optional input that was not given)
                    st = t.untyped_storage()
                    saved.append((st.data_ptr(), st.nbytes(), t.shape, t.dtype))
        for nf, _ in fn.next_functions:
            if nf is not None and nf not in seen:
                seen.add(nf)
                fns.append(nf)
    return len(fns)


def cpu(fn, *args) -> float:
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    t0 = time.process_time()
    try:
        fn(*args)
    finally:
        dt = time.process_time() - t0
        if was:
            gc.enable()
    return dt


def free_deep(holder: list) -> None:
    """Drop a deep graph on a thread with a big stack. torch 2.13 keeps the Python wrapper of
    every autograd node that Python has touched alive for as long as the node, and freeing such
    a chain recurses once per node through the wrappers' deallocators: past about 50,000 nodes
    that overflows the main thread's 8 MB stack (a segfault; any Python walk does it)."""
    threading.stack_size(1 << 30)
    t = threading.Thread(target=holder.clear)
    t.start()
    t.join()


WALKS = {
    "bare BFS, id() set": bare_id_set,
    "bare BFS, object set": bare_object_set,
    "bare BFS + metadata reads": bare_with_metadata,
    "bare BFS + metadata + saved reads": bare_with_saved,
    "graph_of(shapes=False)": lambda root: gradscope.graph_of(root, shapes=False),
    "graph_of() (shapes, dtypes, saved)": gradscope.graph_of,
}


def measure(build, n: int, reps: int, path: str) -> dict:
    """Interleaved medians: every walk on a graph of its own that no Python code touched before
    (the first walk of a graph also creates its Python wrappers, as in real use), then the
    JSON round trip of the full walk's result."""
    times: dict = {k: [] for k in WALKS}
    times["JSON write (save_json)"] = []
    times["JSON read (Trace.load)"] = []
    for rep in range(reps):
        for k, walk in WALKS.items():
            holder = [build(n)]
            times[k].append(cpu(walk, holder[0]))
            if rep == 0 and k == "graph_of() (shapes, dtypes, saved)":
                graph = gradscope.graph_of(holder[0])
                trace = Trace(graph=graph)
            free_deep(holder)
        times["JSON write (save_json)"].append(cpu(trace.save_json, path))
        times["JSON read (Trace.load)"].append(cpu(Trace.load, path))
    assert Trace.load(path).graph == graph  # the round trip is exact
    out = {k: statistics.median(v) for k, v in times.items()}
    out["nodes"], out["edges"] = len(graph.nodes), len(graph.edges)
    out["bytes"] = os.path.getsize(path)
    return out


def table(name: str, r: dict) -> list:
    base, fast, floor, full = (r["bare BFS, id() set"], r["bare BFS, object set"],
                               r["bare BFS + metadata reads"],
                               r["bare BFS + metadata + saved reads"])
    lines = [f"{name}: {r['nodes']:,} nodes, {r['edges']:,} edges, JSON "
             f"{r['bytes'] / 1e6:.0f} MB", "",
             "| configuration | CPU time (median) | / bare BFS, id() set | / bare BFS, object set "
             "| / bare BFS + metadata reads | / bare BFS + metadata + saved reads |",
             "|---|---|---|---|---|---|"]
    for k, v in r.items():
        if k in ("nodes", "edges", "bytes"):
            continue
        lines.append(f"| {k} | {v:.2f} s | {v / base:.2f}x | {v / fast:.2f}x | {v / floor:.2f}x "
                     f"| {v / full:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = [f"torch {torch.__version__}, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs, {args.reps} interleaved repetitions, CPU time medians", ""]
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        for name, build in (("chain", chain), ("recurrence with a shared weight", recurrence)):
            lines += table(name, measure(build, args.nodes, args.reps, path)) + [""]
            print("\n".join(lines[-13:]), flush=True)
    finally:
        os.unlink(path)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
