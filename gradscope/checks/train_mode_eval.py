"""train-mode-eval: evaluation under no_grad with Dropout/BatchNorm still in training mode."""
from __future__ import annotations

from ..findings import Finding
from ._common import names_list
from .registry import Check


def run(trace) -> list:
    by_model: dict = {}
    for e in trace.events:
        if e.get("kind") == "forward" and not e.get("grad", True) and e.get("train_mode"):
            by_model.setdefault(e["model"], []).append(e)
    out = []
    for model, events in by_model.items():
        modules = sorted({m for e in events for m in e["train_mode"]})
        total = max(e.get("train_mode_count", 0) for e in events)
        stats = any(e.get("bn_updated") for e in events)
        effect = (" BatchNorm running statistics were updated by these evaluation batches, so "
                  "the model's stored statistics now include evaluation data." if stats else "")
        out.append(Finding(
            "train-mode-eval", "warning",
            f"{len(events)} forward pass(es) of {model} ran under torch.no_grad()/inference_mode() "
            f"with {names_list([f'{model}.{m}' for m in modules], 4, total)} in training mode "
            f"(first at {events[0]['location']}): evaluation without model.eval(), so dropout "
            f"is still random and BatchNorm uses batch statistics.{effect}",
            hint=f"Call {model}.eval() before evaluating and {model}.train() before training "
                 "again.",
            module=model, location=events[0]["location"],
            data={"forwards": len(events), "modules": modules, "bn_updated": stats}))
    return out


CHECK = Check("train-mode-eval", "warning",
              "evaluation under no_grad with Dropout/BatchNorm in training mode", run)
