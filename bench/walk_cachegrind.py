"""The walk against the bare walks, counted by Valgrind's cachegrind instead of timed.

    python bench/walk_cachegrind.py [--nodes 50000] [--ll-bytes 2097152] [--out FILE]

On a shared machine the CPU time of one walk moves by 10-40% from one repetition to the
next, which hides any change smaller than that. Cachegrind counts instead: the instructions
a walk executes (Ir) and the misses of a simulated first-level data cache (D1) and last-level
cache (LL). With the hash seed fixed and address randomisation off, two runs of the same child
differ by about 0.05% in instructions, so a change of 1% shows.

Each configuration of bench_walk.py runs in a child process under cachegrind: build the graph,
walk it once, exit. A child that builds the graph and does not walk it gives the counts to
subtract. The graph is small (cachegrind runs ~50x slower than the CPU), so the simulated
last-level cache is made small too (``--ll-bytes``, 2 MB by default), so that a 50,000-node
graph does not fit in it, as a million-node graph does not fit in a real one.

Counts are not time: on a quiet machine the chain's walk took 1.22-1.26x the bare walk's
time, against 1.35-1.38x its instructions here. Time is what bench_walk.py measures; this
bench tells whether a change to the walk made it cheaper, and where its cost is.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import gc, os, sys
sys.path.insert(0, {here!r})
import bench_walk as B
graph, walk, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = {{"chain": B.chain, "recurrence": B.recurrence}}[graph](n)
gc.collect()
gc.disable()
if walk != "none":
    B.WALKS[walk](root)
os._exit(0)  # (no teardown counted: freeing a deep graph is not the walk)
"""

# bench_walk.WALKS's names ("none": build the graph only); its id()-set and object-set walks,
# which read no metadata, are left out
WALKS = ("none", "bare BFS + metadata reads", "bare BFS + metadata + saved reads",
         "graph_of(shapes=False)", "graph_of() (shapes, dtypes, saved)")

_COUNT = {"Ir": r"I\s+refs:\s+([\d,]+)", "D1": r"D1\s+misses:\s+([\d,]+)",
          "LL": r"LL misses:\s+([\d,]+)"}


def _env() -> dict:
    """The children's environment: the hash seed fixed, compiled modules written and read."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def counts(script: str, graph: str, walk: str, nodes: int, ll_bytes: int) -> dict:
    env = _env()
    with tempfile.NamedTemporaryFile(suffix=".cg") as out:
        # Address randomisation off where setarch can: objects hash by address, so it moves
        # the sets' and dicts' collisions and the counts with them.
        fixed = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
        run = subprocess.run(
            fixed + ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={ll_bytes},16,64",
             f"--cachegrind-out-file={out.name}", sys.executable, script, graph, walk,
             str(nodes)], env=env, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"cachegrind run of {walk!r} on the {graph} failed "
                         f"(exit {run.returncode}):\n{run.stderr[-2000:]}")
    found = {}
    for key, pattern in _COUNT.items():
        m = re.search(pattern, run.stderr)
        if m is None:
            raise SystemExit(f"no {key} count in cachegrind's output for {walk!r}")
        found[key] = int(m.group(1).replace(",", ""))
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50_000)
    ap.add_argument("--ll-bytes", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("walk_cachegrind.py needs Valgrind (Debian: apt-get install valgrind); "
                         "bench_walk.py measures the walk's time without it.")
    fd, script = tempfile.mkstemp(suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(CHILD.format(here=HERE))
    # Compile every module once outside Valgrind, so no child counts the compiling.
    subprocess.run([sys.executable, "-c", "import gradscope, torch"], cwd=ROOT, check=True,
                   env=_env())
    lines = [f"cachegrind, {args.nodes:,}-node graphs, simulated LL cache "
             f"{args.ll_bytes // 1024} KB; counts of the walk alone (less a child that "
             "builds the graph and does not walk it)", ""]
    try:
        for graph in ("chain", "recurrence"):
            jobs = [(graph, w) for w in WALKS]
            with ThreadPoolExecutor(args.jobs) as pool:
                got = dict(zip(WALKS, pool.map(
                    lambda job: counts(script, *job, args.nodes, args.ll_bytes), jobs)))
            base = got.pop("none")
            net = {w: {k: c[k] - base[k] for k in c} for w, c in got.items()}
            floor = net["bare BFS + metadata + saved reads"]
            lines += [f"{graph}:", "",
                      "| configuration | instructions | D1 misses | LL misses "
                      "| / bare + metadata + saved reads (instructions, D1, LL) |",
                      "|---|---|---|---|---|"]
            for w, c in net.items():
                lines.append(f"| {w} | {c['Ir'] / 1e6:.1f} M | {c['D1'] / 1e6:.2f} M "
                             f"| {c['LL'] / 1e6:.3f} M | {c['Ir'] / floor['Ir']:.2f}x, "
                             f"{c['D1'] / floor['D1']:.2f}x, {c['LL'] / floor['LL']:.2f}x |")
            lines.append("")
            print("\n".join(lines[-9:]), flush=True)
    finally:
        os.unlink(script)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
