"""rank-divergence: ranks of a distributed run that did different work or got different
gradients after the all-reduce (rank-dependent control flow)."""
from __future__ import annotations

import math

from ..findings import Finding
from ._common import names_list
from .registry import Check

TOLERANCE = 1e-5  # relative: all-reduced gradients are identical on every rank


def run(trace) -> list:
    ranks = trace.ranks
    if len(ranks) < 2 or any(r["status"] not in ("ok", None) for r in ranks):
        return []  # a single rank, or a failed one (the run's notes say which)
    counts = {(r["backward_calls"], r["optimizer_steps"]) for r in ranks}
    if len(counts) > 1:
        detail = "; ".join(f"rank {r['rank']}: {r['backward_calls']} backward, "
                           f"{r['optimizer_steps']} steps" for r in ranks)
        return [Finding(
            "rank-divergence", "error",
            f"The ranks did different amounts of work ({detail}): some code path depends on the "
            "rank. With DistributedDataParallel that desynchronises the gradient all-reduce "
            "(hangs, or gradients averaged across different steps).",
            hint="Make every rank run the same forward/backward/step sequence; keep rank-specific "
                 "code (logging, checkpointing) outside the training computation.",
            data={"ranks": [{k: r[k] for k in ("rank", "backward_calls", "optimizer_steps")}
                            for r in ranks]})]
    first = ranks[0]
    bad: dict = {}
    for name, series in first["grad_norms"].items():
        for other in ranks[1:]:
            theirs = other["grad_norms"].get(name)
            if theirs is None:
                continue
            for k, (a, b) in enumerate(zip(series, theirs)):
                if math.isfinite(a) and math.isfinite(b) and \
                        abs(a - b) > TOLERANCE * max(abs(a), abs(b), 1e-12):
                    step = first["norm_steps"][k] if k < len(first["norm_steps"]) else k + 1
                    bad.setdefault(name, (step, other["rank"], a, b))
                    break
    if not bad:
        return []
    name, (step, rank, a, b) = min(bad.items(), key=lambda kv: kv[1][0])
    return [Finding(
        "rank-divergence", "error",
        f"After the gradient all-reduce the ranks hold different gradients for "
        f"{names_list(sorted(bad), 4)} (first at optimizer step {step}: {name} has norm "
        f"{a:.6g} on rank {first['rank']} and {b:.6g} on rank {rank}). Something changed the "
        "gradients on some ranks only (clipping, scaling or a hook under `if rank == 0`), so "
        "the replicas drift apart.",
        hint="Apply gradient clipping, scaling and hooks on every rank, or before the all-reduce.",
        data={"parameters": sorted(bad), "step": step})]


CHECK = Check("rank-divergence", "error",
              "ranks of a distributed run did different work or hold different gradients", run)
