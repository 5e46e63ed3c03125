"""param-not-in-optimizer: parameters that get gradients but that no optimizer updates."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list, numel
from .registry import Check


def run(trace) -> list:
    if not trace.optimizer_steps:
        return []
    missing: dict = {}
    for p in trace.parameters:
        if p.get("in_optimizer") is False and p["requires_grad"] and (
                p.get("grad_seen") or p.get("in_graph")):
            missing.setdefault((p["model"], p["module"]), []).append(p)
    steps = [e for e in trace.events if e.get("kind") == "step"]
    location = steps[0].get("location") if steps else None
    out = []
    for (model, module), params in missing.items():
        names = [p["name"] for p in params]
        out.append(Finding(
            "param-not-in-optimizer", "error",
            f"{names_list(names)} of {model} receive gradients but are in no optimizer's "
            f"param_groups ({trace.optimizer_steps} optimizer step(s) seen, first at "
            f"{location}): they are never updated. Typical cause: the layer was created or "
            "replaced after the optimizer was built from model.parameters().",
            hint="Build the optimizer after the model is complete, or add them with "
                 "optimizer.add_param_group({'params': [...]}).",
            module=module_path(model, module), location=location,
            data={"parameters": names, "values": sum(numel(p["shape"]) for p in params)}))
    return out


CHECK = Check("param-not-in-optimizer", "error",
              "parameters that get gradients but belong to no optimizer that steps", run)
