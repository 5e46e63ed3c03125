"""exploding-grad: gradient norms far above the last layer's, or growing without bound."""
from __future__ import annotations

import math

from ..findings import Finding
from ._gradflow import MIN_STEPS, medians, weight_norms
from .registry import Check

RATIO = 70.0
GROWTH = 100.0
LARGE = 1e3


def run(trace) -> list:
    steps = trace.gradients.get("norm_steps", [])
    if len(steps) < MIN_STEPS:
        return []
    series = weight_norms(trace)
    layers = medians(series)
    if len(layers) < 2:
        return []
    (first, g_first), (last, g_last) = layers[0], layers[-1]
    totals = [math.sqrt(sum(v[k] ** 2 for _, v in series if k < len(v) and math.isfinite(v[k])))
              for k in range(len(steps))]
    growing = totals[0] > 0 and totals[-1] > GROWTH * totals[0] and totals[-1] > LARGE
    skewed = g_last > 0 and g_first / g_last > RATIO and g_first > 1.0
    if not (growing or skewed):
        return []
    why = (f"the total gradient norm grew from {totals[0]:.2e} to {totals[-1]:.2e} over "
           f"{len(steps)} steps" if growing else
           f"the first layer {first} has a median gradient norm {g_first / g_last:.0f} times the "
           f"last layer's ({g_first:.2e} vs {g_last:.2e})")
    return [Finding(
        "exploding-grad", "warning",
        f"Exploding gradients: {why}; updates this large make training unstable.",
        hint="Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), lower the "
             "learning rate, and add normalisation or residual connections.",
        module=first.rsplit(".", 1)[0],
        data={"first_total": totals[0], "last_total": totals[-1], "first": first, "last": last})]


CHECK = Check("exploding-grad", "warning",
              "gradient norms growing without bound or far larger in the first layers", run)
