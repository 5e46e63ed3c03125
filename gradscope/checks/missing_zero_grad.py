"""missing-zero-grad: gradients carried across optimizer steps (seed 001)."""
from __future__ import annotations

from ..findings import Finding
from ._common import names_list
from .registry import Check


def _backward_after(trace, step_index: int):
    seen_step = False
    for e in trace.events:
        if e.get("kind") == "step" and e.get("index") == step_index:
            seen_step = True
        elif seen_step and e.get("kind") == "backward":
            return e.get("location")
    return None


def _common_module(params: list):
    """The innermost module holding all of ``params`` (the model when they span it): the
    alphabetically first one's module would point the report at, say, ``model.bn1``."""
    paths = [p.split(".")[:-1] for p in params]
    if not paths:
        return None
    common = paths[0]
    for path in paths[1:]:
        n = 0
        while n < min(len(common), len(path)) and common[n] == path[n]:
            n += 1
        common = common[:n]
    return ".".join(common) or None


def run(trace) -> list:
    bad = [s for s in trace.accumulation if s.get("carried")]
    if not bad:
        return []
    first = bad[0]
    prev = next((s for s in trace.accumulation if s["step"] == first["step"] - 1), None)
    most = max(int(n) for s in bad for n in s["summed"])
    params = sorted({p for s in bad for p in s["carried"]})
    between = (f"between step {prev['step']} ({prev['location']}) and the next backward "
               f"({_backward_after(trace, prev['step'])})") if prev else "before this step"
    module = _common_module(params)
    sites = sorted({e["location"] for e in trace.events
                    if e.get("kind") == "zero_grad" and e.get("location")})
    where = (f" zero_grad() was called only at {', '.join(sites[:3])}." if sites else
             " zero_grad() was never called.")
    in_models = {f"{p['model']}.{p['name']}" for p in trace.parameters}
    outside = [p for p in params if p not in in_models]
    if outside and sites:
        where += (f" {names_list(outside, 3)} belong(s) to no model: the optimizer trains "
                  "them, so model.zero_grad() leaves their gradients alone; "
                  "optimizer.zero_grad() clears every parameter it steps.")
    return [Finding(
        "missing-zero-grad", "error",
        f"At optimizer step {first['step']} ({first['location']}) the gradients of "
        f"{len(params)} parameter(s) ({names_list(params, 4)}) still held the backward calls "
        f"from before the previous step: no zero_grad() and no .grad reset happened {between}. "
        f"PyTorch adds every backward() into .grad, so {len(bad)} of "
        f"{len(trace.accumulation)} steps used stale gradients, up to {most} backward calls "
        "summed into one update: the effective learning rate keeps growing and training "
        "diverges or stalls." + where,
        hint="Call optimizer.zero_grad() once per step (before loss.backward() or right after "
             "optimizer.step()). To accumulate over N batches on purpose, zero after every "
             "N-th step instead.",
        module=module, location=first["location"],
        data={"steps": [s["step"] for s in bad], "parameters": params, "max_summed": most,
              "zero_grad_calls": sites})]


CHECK = Check("missing-zero-grad", "error",
              "gradients carried over from before the previous optimizer step (no zero_grad)", run)
