"""batchnorm-small-batch: BatchNorm in training mode on too few values per channel (or one
sample), so its statistics are noise (seed 002 on BatchNorm)."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from .registry import Check

MIN_VALUES = 16  # values per channel below which mean and variance are mostly noise


def _small(row: dict, ranks: int) -> bool:
    return row["batch"] * ranks <= 1 or row["per_channel"] * ranks < MIN_VALUES


def run(trace) -> list:
    world = int(trace.run.get("world_size") or 1)
    out = []
    for m in trace.modules:
        stats = m.get("batch_stats")
        if not stats:
            continue
        ranks = world if m.get("type") == "SyncBatchNorm" else 1
        small = [s for s in stats if _small(s, ranks)]
        if not small:
            continue
        total = sum(s["calls"] for s in stats)
        bad = sum(s["calls"] for s in small)
        worst = min(small, key=lambda s: (s["per_channel"], s["batch"]))
        path = module_path(m["model"], m["name"])
        if worst["batch"] == 1 and worst["per_channel"] >= MIN_VALUES:
            why = (f"a batch of 1: each sample is normalised with its own statistics "
                   f"({worst['per_channel']} values per channel from one sample), so the network "
                   "trains like instance norm and behaves differently after eval()")
        else:
            why = (f"only {worst['per_channel']} value{'s' if worst['per_channel'] != 1 else ''} "
                   f"per channel (batch {worst['batch']}): the batch mean and variance are mostly "
                   "noise, and the running statistics used in eval drift away from them")
        some = "every call" if bad == total else f"{bad} of {total} calls"
        out.append(Finding(
            "batchnorm-small-batch", "warning",
            f"{path} ({m.get('type')}) normalised in training mode over {why} ({some}).",
            hint="Train with a larger batch, drop a small last batch (DataLoader(..., "
                 "drop_last=True)), keep these norms in eval() (frozen statistics), or use "
                 "GroupNorm/LayerNorm, which do not depend on the batch.",
            module=path, data={"stats": stats, "small_calls": bad, "calls": total,
                               "min_per_channel": worst["per_channel"],
                               "batch": worst["batch"]}))
    return out


CHECK = Check("batchnorm-small-batch", "warning",
              "BatchNorm training on a batch too small for its statistics", run)
