"""graph-cut: part of a model gets no gradient because a tensor left autograd on the way.

``unused-parameter`` says *that* the loss does not depend on ``model.enc``; this check says
*where* the history was dropped: the ``.detach()``, ``.data``, NumPy round trip or
``torch.tensor(t.tolist())`` whose input still carried ``model.enc``'s history (the op watch of
``gradscope trace`` records each such site and the parameters upstream of it). Parameters it
explains are left out of ``unused-parameter``.
"""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list, numel, plural
from ._history import best_cut, cut_phrase, cuts_upstream_of
from .dead_training import dead_step
from .registry import Check

HINT = ("If these parameters should train, keep the computation in torch on the tensor "
        "itself: remove the .detach() / .data, replace NumPy code with torch ops, use the tensor "
        "instead of torch.tensor(t.tolist()). If the cut is deliberate (a frozen encoder), "
        "freeze them with requires_grad_(False) and leave them out of the optimizer.")


def _untrained(trace) -> dict:
    """(model, module) -> parameters never given a gradient, in models where something else
    trained, or whose parameters an optimizer holds (it is meant to train them). Parameters
    no optimizer holds are left out: a stop-gradient on them is a design (BYOL's or DQN's
    target network, updated by averaging; a linear probe's frozen backbone)."""
    by_model: dict = {}
    for p in trace.parameters:
        if p.get("grad_seen") is not None and p["requires_grad"]:
            by_model.setdefault(p["model"], []).append(p)
    # a whole model untrained while its optimizer's steps were dead: dead-training says why
    dead = any(dead_step(s) for s in trace.accumulation)
    out: dict = {}
    for model, params in by_model.items():
        trained = any(p["grad_seen"] for p in params)
        for p in params:
            if p["grad_seen"] or p.get("in_optimizer") is False:
                continue
            if trained or (p.get("in_optimizer") and not dead):
                out.setdefault((model, p["module"]), []).append(p)
    return out


def explained(trace) -> dict:
    """(model, module) -> the cut that explains why its parameters got no gradient."""
    if not trace.cuts or (trace.failure or {}).get("kind") == "inplace-modified":
        return {}
    out = {}
    for (model, module), _ in _untrained(trace).items():
        cut = best_cut(cuts_upstream_of(trace, model, module))
        if cut is not None:
            out[(model, module)] = cut
    return out


def run(trace) -> list:
    found = explained(trace)
    if not found:
        return []
    untrained = _untrained(trace)
    by_cut: dict = {}
    for key, cut in found.items():
        by_cut.setdefault((cut["op"], cut.get("location")), (cut, []))[1].append(key)
    out = []
    for cut, keys in by_cut.values():
        params = [p for k in keys for p in untrained[k]]
        modules = [module_path(m, mod) for m, mod in keys]
        values = sum(numel(p["shape"]) for p in params)
        out.append(Finding(
            "graph-cut", "warning",
            f"{names_list(modules)} ({plural(len(params), 'parameter')}, {values:,} values) "
            f"never received a gradient in {plural(trace.backward_calls, 'backward call')}: "
            f"the history from {'them' if len(modules) > 1 else 'it'} was dropped by "
            f"{cut_phrase(cut)}, so the loss does not reach "
            f"{'them: their' if len(modules) > 1 else 'it: its'} parameters are never trained.",
            hint=HINT, module=modules[0], location=cut.get("location"),
            data={"cut": {k: cut.get(k) for k in ("op", "location", "model", "module",
                                                   "in_forward", "shape", "grad_fn")},
                  "modules": modules, "parameters": [p["name"] for p in params][:50],
                  "values": values}))
    return out


CHECK = Check("graph-cut", "warning",
              "part of a model gets no gradient: its history was dropped (.detach(), .data, "
              "NumPy) at a named line", run)
