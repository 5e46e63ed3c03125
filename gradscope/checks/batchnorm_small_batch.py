"""batchnorm-small-batch: BatchNorm on batch statistics from too few values per channel (or
one sample), so its statistics are noise (seed 002 on BatchNorm)."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from .registry import Check

MIN_VALUES = 16  # values per channel below which mean and variance are mostly noise


def _small(row: dict, ranks: int) -> bool:
    return row["batch"] * ranks <= 1 or row["per_channel"] * ranks < MIN_VALUES


def _offenders(trace) -> dict:
    """model -> [(module row, small stats, all stats)] for norms that saw small batches."""
    world = int(trace.run.get("world_size") or 1)
    out: dict = {}
    for m in trace.modules:
        stats = m.get("batch_stats")
        if not stats:
            continue
        ranks = world if m.get("type") == "SyncBatchNorm" else 1
        small = [s for s in stats if _small(s, ranks)]
        if small:
            out.setdefault(m["model"], []).append((m, small, stats))
    return out


def run(trace) -> list:
    out = []
    for model, rows in _offenders(trace).items():
        paths = [module_path(m["model"], m["name"]) for m, _, _ in rows]
        worst = min((s for _, small, _ in rows for s in small),
                    key=lambda s: (s["per_channel"], s["batch"]))
        total = sum(s["calls"] for _, _, stats in rows for s in stats)
        bad = sum(s["calls"] for _, small, _ in rows for s in small)
        types = sorted({m.get("type") for m, _, _ in rows})
        if worst["batch"] == 1 and worst["per_channel"] >= MIN_VALUES:
            why = (f"a batch of 1: each sample is normalised with its own statistics "
                   f"({worst['per_channel']} values per channel from one sample), so the network "
                   "trains like instance norm and behaves differently after eval()")
        else:
            why = (f"only {worst['per_channel']} value{'s' if worst['per_channel'] != 1 else ''} "
                   f"per channel (batch {worst['batch']}): the batch mean and variance are mostly "
                   "noise, and the running statistics used in eval drift away from them")
        some = "every call" if bad == total else f"{bad} of {total} calls"
        # FILE.py:NAME runs the batch given with --input, not necessarily the training one
        given = trace.run.get("mode") == "model"
        out.append(Finding(
            "batchnorm-small-batch", "info" if given else "warning",
            f"{names_list(paths, 4)} ({', '.join(types)}) normalised with batch statistics over "
            f"{why} ({some})." + (" The batch is the --input shape given to gradscope; this "
                                 "matters only if you train with batches this small." if given
                                 else ""),
            hint=("Trace with the batch size you train with (--input)." if given else
                  "Train with a larger batch, drop a small last batch (DataLoader(..., "
                  "drop_last=True)), keep these norms in eval() (frozen statistics), or use "
                  "GroupNorm/LayerNorm, which do not depend on the batch."),
            module=paths[0], data={"modules": paths, "small_calls": bad, "calls": total,
                                   "min_per_channel": worst["per_channel"],
                                   "batch": worst["batch"],
                                   "stats": {p: r[2] for p, r in zip(paths, rows)}}))
    return out


CHECK = Check("batchnorm-small-batch", "warning",
              "BatchNorm training on a batch too small for its statistics", run)
