"""unused-parameter: trainable parameters that never received a gradient in the whole run."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list, numel
from .graph_cut import explained as explained_by_cuts
from .registry import Check


_MODEL_MODE_NOTE = {"model": (
    " This was a FILE.py:NAME run, where the loss is the model's output: a parameter that only "
    "your training loss uses (a learned loss weight, say) looks unused here; trace the training "
    "script to see it train.")}


def run(trace) -> list:
    if (trace.failure or {}).get("kind") == "inplace-modified":
        return []  # a backward stopped half way: the parameters it did not reach say nothing
    by_model: dict = {}
    for p in trace.parameters:
        if p.get("grad_seen") is None or not p["requires_grad"]:
            continue  # no backward ran, or frozen on purpose
        by_model.setdefault(p["model"], []).append(p)
    out = []
    cut = explained_by_cuts(trace)  # graph-cut names the line where these lost the gradient
    for model, params in by_model.items():
        if not any(p["grad_seen"] for p in params):
            continue  # nothing of this model trained in the run (a frozen teacher, say)
        by_module: dict = {}
        for p in params:
            if not p["grad_seen"] and (model, p["module"]) not in cut:
                by_module.setdefault(p["module"], []).append(p)
        for module, unused in by_module.items():
            names = [p["name"] for p in unused]
            count = sum(numel(p["shape"]) for p in unused)
            out.append(Finding(
                "unused-parameter", "warning",
                f"{names_list(names)} ({count:,} values) never received a gradient in "
                f"{trace.backward_calls} backward call(s): the loss does not depend on "
                f"{module_path(model, module)}, so it is not trained. Under "
                "DistributedDataParallel this is an error unless you pass "
                "find_unused_parameters=True (which costs an extra graph walk per step).",
                hint="Use the module in forward(), remove it, or freeze it on purpose with "
                     "requires_grad_(False)." + _MODEL_MODE_NOTE.get(trace.run.get("mode"), ""),
                module=module_path(model, module), location=None,
                data={"parameters": names, "values": count}))
    return out


CHECK = Check("unused-parameter", "warning",
              "trainable parameters that never get a gradient (DDP needs find_unused_parameters)",
              run)
