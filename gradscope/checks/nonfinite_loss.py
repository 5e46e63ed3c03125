"""nonfinite-loss: backward was called on a NaN or Inf loss."""
from __future__ import annotations

from ..findings import Finding
from .registry import Check


def run(trace) -> list:
    bad = trace.gradients.get("nonfinite_losses", [])
    if not bad:
        return []
    first = bad[0]
    return [Finding(
        "nonfinite-loss", "error",
        f"The loss was NaN or Inf at backward call {first['backward']} ({first['location']}), and "
        f"at {len(bad)} backward call(s) in all: every gradient computed from it is NaN/Inf.",
        hint="Check the inputs and labels of that batch, use log_softmax/cross_entropy instead of "
             "log(softmax), and lower the learning rate if the loss grew before it broke.",
        location=first["location"], data={"backward_calls": [b["backward"] for b in bad]})]


CHECK = Check("nonfinite-loss", "error", "backward was called on a NaN or Inf loss", run)
