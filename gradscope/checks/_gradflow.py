"""Per-layer gradient norms over the recorded steps, in the model's parameter order."""
from __future__ import annotations

import math
import statistics

MIN_STEPS = 5


def weight_norms(trace) -> list:
    """[(display name, [norm per kept step])] for weight matrices (2+ dims) that trained."""
    norms = trace.gradients.get("grad_norms", {})
    out = []
    for p in trace.parameters:
        key = f"{p['model']}.{p['name']}"
        values = norms.get(key)
        if values and p.get("shape") and len(p["shape"]) >= 2:
            out.append((key, values))
    return out


def medians(series: list) -> list:
    return [(name, statistics.median(v for v in values if math.isfinite(v)))
            for name, values in series if any(math.isfinite(v) for v in values)]
