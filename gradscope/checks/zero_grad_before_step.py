"""zero-grad-before-step: the gradients were cleared between backward() and step().

``optimizer.zero_grad()`` (or ``model.zero_grad()``, ``p.grad = None``) placed after
``loss.backward()`` and before ``optimizer.step()`` throws the fresh gradients away: every step
applies nothing (SGD) or only its momentum, and the model never learns. It fires only when
*every* parameter of the step that received a gradient had it cleared, so zeroing another
optimizer's parameters in between (a GAN) stays silent.
"""
from __future__ import annotations

from ..findings import Finding
from .registry import Check


def _zero_grad_between(trace, step: int):
    """``file:line`` of the last zero_grad() after the last backward before step ``step``."""
    found = None
    for e in trace.events:
        kind = e.get("kind")
        if kind == "step" and e.get("index") == step:
            return found
        if kind in ("backward", "grad"):
            found = None
        elif kind == "zero_grad":
            found = e.get("location")
    return None


def _emptied(trace, s: dict) -> bool:
    """Every parameter that got a gradient has none at the step, or all zeros and a
    zero_grad() ran in between (all zeros alone can be a dead network, not a reset)."""
    cleared, zeros = s.get("cleared", 0), s.get("zeros", 0)
    if not s.get("contributed") or cleared + zeros != s["contributed"]:
        return False
    return zeros == 0 or _zero_grad_between(trace, s["step"]) is not None


def run(trace) -> list:
    bad = [s for s in trace.accumulation if _emptied(trace, s)]
    if not bad or 2 * len(bad) < len(trace.accumulation):
        # a misplaced zero_grad() empties every step; an occasional emptied one is a guard
        # that drops a bad batch's gradients on purpose (non-finite norm, say)
        return []
    first = bad[0]
    where = _zero_grad_between(trace, first["step"])
    how = (f"zero_grad() at {where} ran between loss.backward() and optimizer.step()" if where
           else "the gradients were reset (p.grad = None or zeroed) between backward() and "
                "step()")
    return [Finding(
        "zero-grad-before-step", "error",
        f"At optimizer step {first['step']} ({first['location']}) all {first['contributed']} "
        f"parameter(s) that received gradients from backward had them cleared again: {how}. "
        f"The step applied no gradient ({len(bad)} of {len(trace.accumulation)} steps), so the "
        "model does not learn from those batches.",
        hint="Call optimizer.zero_grad() before loss.backward() (or right after "
             "optimizer.step()), never between backward() and step().",
        location=where or first["location"],
        data={"steps": [s["step"] for s in bad], "zero_grad": where,
              "parameters": first["contributed"]})]


CHECK = Check("zero-grad-before-step", "error",
              "gradients cleared between backward() and step(): the step applies nothing", run)
