"""vanishing-grad: the first layers' gradients are tiny next to the last layers'."""
from __future__ import annotations

from ..findings import Finding
from ._gradflow import MIN_STEPS, medians, weight_norms
from .registry import Check

RATIO = 1e-3
ABSOLUTE = 1e-5


def run(trace) -> list:
    if len(trace.gradients.get("norm_steps", [])) < MIN_STEPS:
        return []  # too short a run to call it a trend
    layers = medians(weight_norms(trace))
    if len(layers) < 3:
        return []
    (first, g_first), (last, g_last) = layers[0], layers[-1]
    if g_last <= 0 or g_first / g_last >= RATIO or g_first >= ABSOLUTE:
        return []
    return [Finding(
        "vanishing-grad", "warning",
        f"Vanishing gradients: over {len(trace.gradients['norm_steps'])} steps the first layer "
        f"{first} got a median gradient norm of {g_first:.2e}, {g_last / max(g_first, 1e-300):.1e} "
        f"times smaller than the last layer {last} ({g_last:.2e}); the early layers barely "
        "learn.",
        hint="Use ReLU/GELU instead of sigmoid/tanh in deep stacks, add normalisation "
             "(BatchNorm/LayerNorm) or residual connections, and a suitable initialisation.",
        module=first.rsplit(".", 1)[0], data={"first": first, "last": last,
                                              "first_norm": g_first, "last_norm": g_last})]


CHECK = Check("vanishing-grad", "warning",
              "first-layer gradients thousands of times smaller than the last layer's", run)
