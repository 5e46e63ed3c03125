"""eval-mode-train: an optimizer step used gradients from a forward in eval mode."""
from __future__ import annotations

from ..findings import Finding
from ._common import names_list
from .registry import Check


def run(trace) -> list:
    pending: dict = {}
    hits: dict = {}
    for e in trace.events:
        kind = e.get("kind")
        if kind == "forward" and e.get("grad"):
            if e.get("eval_mode"):
                pending[e["model"]] = e
            else:
                pending.pop(e["model"], None)
        elif kind == "step":
            for model, fwd in pending.items():
                hits.setdefault(model, []).append((fwd, e))
            pending.clear()
    out = []
    for model, pairs in hits.items():
        fwd, step = pairs[0]
        modules = fwd["eval_mode"]
        out.append(Finding(
            "eval-mode-train", "warning",
            f"{len(pairs)} optimizer step(s) used gradients from forward passes of {model} in which "
            f"{names_list([f'{model}.{m}' for m in modules], 4, fwd.get('eval_mode_count'))} "
            f"were in eval mode (first "
            f"forward at {fwd['location']}, step at {step['location']}): dropout is off and "
            "BatchNorm uses its running statistics, so the model trains differently from what "
            "you intended. Usually model.eval() was left on after an evaluation.",
            hint=f"Call {model}.train() at the start of every training epoch.",
            module=model, location=fwd["location"],
            data={"steps": len(pairs), "modules": modules}))
    return out


CHECK = Check("eval-mode-train", "warning",
              "an optimizer step used gradients from a forward in eval mode", run)
