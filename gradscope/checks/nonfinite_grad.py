"""nonfinite-grad: NaN or Inf in a gradient at an optimizer step."""
from __future__ import annotations

from ..findings import Finding
from ._common import names_list
from .registry import Check


def run(trace) -> list:
    bad = trace.gradients.get("nonfinite_grads", [])
    if not bad:
        return []
    first = bad[0]
    params = sorted({p for b in bad for p in b["params"]})
    step = next((s for s in trace.accumulation if s["step"] == first["step"]), {})
    origin = trace.gradients.get("nonfinite_origin")
    module = params[0].rsplit(".", 1)[0] if params else None
    nodes = []
    if origin and not origin.get("arrived_nonfinite"):
        where = origin["model"] + (f".{origin['module']}" if origin.get("module") else "") \
            if origin.get("model") else "outside every model"
        born = (f" The first non-finite gradient was produced by {origin['op']} (node "
                f"{origin['node']} of backward {origin['backward']}) in {where}.")
        module = where if origin.get("model") else module
        if origin["backward"] == 1:
            nodes = [origin["node"]]  # the drawn graph is the first backward's
        hint_find = ""
    elif trace.gradients.get("nonfinite_search"):
        born = " The search for the op that produced it found none in the graph: the gradient " \
               "was already non-finite when backward started (see nonfinite-loss)."
        hint_find = ""
    else:
        born = ""
        hint_find = ("Re-run with 'gradscope trace --find-nonfinite' (or gradscope.watch(..., "
                     "find_nonfinite=True)) to name the op that produced it; ")
    return [Finding(
        "nonfinite-grad", "error",
        f"NaN or Inf in the gradients of {names_list(params, 4)} at optimizer step "
        f"{first['step']} ({step.get('location')}), and at {len(bad)} step(s) in all: the step "
        "writes NaN/Inf into the weights and the model is lost from there on. Typical causes: "
        f"sqrt/log/division at 0, an exploding loss, a learning rate far too high.{born}",
        hint=hint_find + "guard sqrt/log/division with a small epsilon (torch.sqrt(x + 1e-12)); "
             "clip gradients; with fp16 use torch.amp.GradScaler, which skips such steps.",
        module=module, location=step.get("location"), nodes=nodes,
        data={"steps": [b["step"] for b in bad], "parameters": params, "origin": origin})]


CHECK = Check("nonfinite-grad", "error", "NaN or Inf in a gradient at an optimizer step", run)
