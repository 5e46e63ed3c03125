"""grad-accumulation: several backward calls per step, zeroed after each step (deliberate)."""
from __future__ import annotations

from ..findings import Finding
from .registry import Check


def run(trace) -> list:
    steps = [s for s in trace.accumulation if not s.get("carried")]
    multi = [s for s in steps if s.get("backward_calls", 0) > 1]
    if not multi:
        return []
    factors = sorted({s["backward_calls"] for s in multi})
    factor = max(factors, key=lambda f: sum(1 for s in multi if s["backward_calls"] == f))
    usual = sum(1 for s in multi if s["backward_calls"] == factor)
    others = [f"{sum(1 for s in steps if s.get('backward_calls') == f)} summed {f}"
              for f in sorted({s.get("backward_calls", 0) for s in steps} - {factor, 0})]
    rest = f" ({', '.join(others)}: a partial group, say)" if others else ""
    return [Finding(
        "grad-accumulation", "info",
        f"Gradient accumulation: {usual} of {len(trace.accumulation)} optimizer steps summed "
        f"{factor} backward calls each{rest}, and the gradients were reset after every step. "
        "The effective batch is that many batches.",
        hint="Nothing to fix if intended; divide the loss by the accumulation factor to keep the "
             "gradient scale of one batch.",
        location=multi[0]["location"], data={"factor": factor, "factors": factors,
                                             "steps": len(multi)})]


CHECK = Check("grad-accumulation", "info",
              "several backward calls per optimizer step, reset after each step", run)
