"""loss-broadcast: a loss compares a prediction with a target of another shape.

The classic is a regression head that outputs ``(N, 1)`` trained against targets of shape
``(N,)``: ``F.mse_loss`` (with a warning that scrolls away) or a hand-written
``((pred - y) ** 2).mean()`` (silently) broadcast the two to ``(N, N)`` and average every
prediction against every target. The loss still goes down, towards the mean of the targets, and
the model never learns the per-sample mapping. ``gradscope trace`` records the shapes where the
loss is called (``Trace.broadcasts``)."""
from __future__ import annotations

from math import prod

from ..findings import Finding
from ..graph import module_path
from .registry import Check

MAX_FINDINGS = 10


def _shape(s: list) -> str:
    return "(" + ", ".join(str(d) for d in s) + ("," if len(s) == 1 else "") + ")"


def _call(op: str) -> str:
    if op in ("sub", "__sub__", "__rsub__", "rsub", "subtract"):
        return "a subtraction of the target from the prediction"
    return f"F.{op}"


def _fix(pred: list, target: list) -> str:
    if len(pred) == len(target) + 1 and pred[-1] == 1:
        return ("Make the shapes equal: pred.squeeze(-1), or target.unsqueeze(-1) "
                "(target.view_as(pred)).")
    if len(target) == len(pred) + 1 and target[-1] == 1:
        return "Make the shapes equal: target.squeeze(-1), or pred.unsqueeze(-1)."
    return ("Give the prediction and the target the same shape before the loss (check the "
            "model's output layer and how the targets are batched).")


def run(trace) -> list:
    out = []
    rows = sorted(trace.broadcasts, key=lambda r: -(r.get("calls") or 0))
    for r in rows[:MAX_FINDINGS]:
        pred, target, result = r["prediction"], r["target"], r["result"]
        pairs = prod(result) > max(prod(pred), prod(target))
        if pairs:
            effect = (f"broadcasting made {_shape(result)}: every prediction is compared with "
                      "every target, so the loss is minimised by predicting the targets' mean "
                      "and the model does not learn the per-sample mapping, though the loss "
                      "still goes down")
        else:
            effect = (f"the {'target' if prod(target) < prod(pred) else 'prediction'} is "
                      f"broadcast to {_shape(result)}, repeating values the other side has one "
                      "of each; this is rarely what the data means")
        where = module_path(r.get("model"), r.get("module")) if r.get("model") else None
        inside = f" (in the forward of {where})" if where else ""
        calls = r.get("calls") or 1
        out.append(Finding(
            "loss-broadcast", "error" if pairs else "warning",
            f"{_call(r['op'])}{inside} compares a prediction of shape {_shape(pred)} with a "
            f"target of shape {_shape(target)}: {effect}. Seen in {calls} "
            f"call{'s' if calls != 1 else ''}.",
            hint=_fix(pred, target), module=where, location=r.get("location"), data=dict(r)))
    return out


CHECK = Check("loss-broadcast", "error",
              "a loss compares prediction and target of different shapes (N x N broadcast)", run)
