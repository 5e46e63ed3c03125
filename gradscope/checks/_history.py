"""Helpers shared by the checks on the timeline and on where history was dropped (plain data)."""
from __future__ import annotations

from typing import Optional

# What each way of leaving autograd is called in a message, best explanation first: a
# .detach() in forward explains a branch without gradient better than a loss.item() for logs.
CUT_NAMES = {
    "detach": "`.detach()`",
    "data": "`.data`",
    "tolist": "`.tolist()` (Python numbers: a tensor made from them has no history)",
    "numpy": "`.numpy()` (a NumPy round trip: torch.from_numpy(...) starts without history)",
    "torch.tensor": "`torch.tensor(t)` (copies the values, not the history)",
    "torch.as_tensor": "`torch.as_tensor(t)` (the values, not the history)",
    "item": "`.item()` (a Python number)",
    "__float__": "`float(t)` (a Python number)",
    "__int__": "`int(t)` (a Python number)",
    "argmax": "`argmax` (integer indices have no gradient)",
    "argmin": "`argmin` (integer indices have no gradient)",
    **{op: f"a comparison (`{sym}`: True/False has no gradient)" for op, sym in (
        ("gt", ">"), ("__gt__", ">"), ("greater", ">"), ("lt", "<"), ("__lt__", "<"),
        ("less", "<"), ("ge", ">="), ("__ge__", ">="), ("greater_equal", ">="),
        ("le", "<="), ("__le__", "<="), ("less_equal", "<="), ("eq", "=="), ("__eq__", "=="),
        ("ne", "!="), ("__ne__", "!="))},
    **{op: f"`torch.{op}` (its derivative is zero almost everywhere)"
       for op in ("round", "floor", "ceil", "sign", "sgn", "trunc", "fix")},
}
_RANK = {op: k for k, op in enumerate(CUT_NAMES)}


def cut_phrase(cut: dict) -> str:
    """``.detach() at model.py:12 in model's forward``."""
    where = cut.get("location") or "an unknown line"
    owner = cut.get("model")
    inside = f" in {owner}{'.' + cut['module'] if cut.get('module') else ''}'s forward" \
        if cut.get("in_forward") and owner else ""
    source = f" (`{cut['source']}`)" if cut.get("source") else ""
    return f"{CUT_NAMES.get(cut['op'], cut['op'])} at {where}{source}{inside}"


def best_cut(cuts: list) -> Optional[dict]:
    """Cuts inside a forward first, then by how well the op explains a missing gradient."""
    if not cuts:
        return None
    return min(cuts, key=lambda c: (not c.get("in_forward"), _RANK.get(c["op"], 99),
                                    c.get("order", 0)))


def module_key(model: Optional[str], module: Optional[str]) -> Optional[str]:
    if model is None:
        return None
    return f"{model}.{module}" if module else model


def cuts_upstream_of(trace, model: str, module: str) -> list:
    """The cuts whose input held history from ``model.module``'s parameters."""
    key = module_key(model, module)
    return [c for c in trace.cuts if key in (c.get("upstream_modules") or ())]


def window(trace, backward_index: int) -> list:
    """The events from just after backward call ``backward_index - 1`` up to and including
    call ``backward_index``: the forward(s) and loss that fed it."""
    out: list = []
    collecting = backward_index == 1
    for e in trace.events:
        if e.get("kind") == "backward":
            if e.get("index") == backward_index - 1:
                collecting = True
                out = []
                continue
            if e.get("index") == backward_index:
                out.append(e)
                return out
        if collecting:
            out.append(e)
    return out


def backward_before_steps(trace) -> dict:
    """``{step index: the last backward call since that optimizer's previous step}`` (None
    when there was none): what fed each step, even when other optimizers stepped in between
    (a GAN, one optimizer per head). One pass over the timeline."""
    out: dict = {}
    last, count = None, 0
    at_previous: dict = {}  # optimizer id -> backward calls seen at its previous step
    for e in trace.events:
        kind = e.get("kind")
        if kind == "backward":
            count += 1
            last = e.get("index")
        elif kind == "step" and e.get("index") not in out:
            owner = e.get("optimizer_id")
            out[e.get("index")] = last if count > at_previous.get(owner, 0) else None
            at_previous[owner] = count
    return out


def at_backward(records: list, backward_index: int) -> list:
    """Records (cuts, switches) that ran between backward calls ``backward_index - 1`` and
    ``backward_index``: their ``backwards`` lists hold the count of calls before them."""
    return [r for r in records if backward_index - 1 in (r.get("backwards") or ())]


def optimizer_model(trace) -> Optional[str]:
    """The model whose parameters the optimizers train (the first one, for messages)."""
    for p in trace.parameters:
        if p.get("in_optimizer") and p.get("requires_grad"):
            return p["model"]
    return None
