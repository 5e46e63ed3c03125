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
    return [Finding(
        "nonfinite-grad", "error",
        f"NaN or Inf in the gradients of {names_list(params, 4)} at optimizer step "
        f"{first['step']} ({step.get('location')}), and at {len(bad)} step(s) in all: the step "
        "writes NaN/Inf into the weights and the model is lost from there on. Typical causes: "
        "sqrt/log/division at 0, an exploding loss, a learning rate far too high.",
        hint="Find the op with torch.autograd.set_detect_anomaly(True) around one failing step; "
             "guard sqrt/log with a small epsilon (torch.sqrt(x + 1e-12)); clip gradients; with "
             "fp16 use torch.amp.GradScaler, which skips such steps.",
        module=params[0].rsplit(".", 1)[0] if params else None, location=step.get("location"),
        data={"steps": [b["step"] for b in bad], "parameters": params})]


CHECK = Check("nonfinite-grad", "error", "NaN or Inf in a gradient at an optimizer step", run)
