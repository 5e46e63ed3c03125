"""builtin-sum: Python's sum() (or a loop of +) over the elements of one tensor (seed 003)."""
from __future__ import annotations

from ..findings import Finding
from ._graph import Adjacency
from .registry import Check

THRESHOLD = 16  # one-element additions of the same tensor before it is worth a word


def run(trace) -> list:
    if not trace.graph.ops() & {"UnbindBackward0", "SelectBackward0"}:
        return []  # (no unbind, no t[i]: nothing to look at)
    adj = Adjacency.of(trace.graph)
    out = []
    for n in trace.graph.nodes:
        if n.op == "UnbindBackward0":
            pieces = [c for c in adj.consumers.get(n.id, [])]
        elif any(adj.op.get(c) == "SelectBackward0" for c in adj.consumers.get(n.id, [])):
            # t[i] in a Python loop: each selection reaches the running total within two ops
            # (t[i] + ..., or w[i] * x + ...)
            selects = [c for c in adj.consumers.get(n.id, []) if adj.op.get(c) == "SelectBackward0"]
            pieces = []
            for sel in selects:
                hop = adj.consumers.get(sel, [])
                pieces.extend(hop)
                pieces.extend(a for h in hop if adj.op.get(h) != "AddBackward0"
                              for a in adj.consumers.get(h, []))
        else:
            continue
        adds = sorted({c for c in pieces if adj.op.get(c) == "AddBackward0"},
                      key=lambda i: int(i[1:]) if i[1:].isdigit() else 0)
        if len(adds) < THRESHOLD:
            continue
        first = trace.graph.node(adds[0])
        where = first.module_path or "code outside the model"
        # the line that iterated this tensor (recorded by gradscope trace): as many rows of
        # the same shape, in the same module; named only when exactly one line fits
        fits = {it["location"] for it in trace.iterations
                if n.op == "UnbindBackward0" and it["rows"] == n.outputs
                and (n.shape is None or tuple(it.get("piece", ())) == tuple(n.shape))
                and (it.get("model"), it.get("module") or "") == (n.model, n.module or "")}
        location = fits.pop() if len(fits) == 1 else None
        if location:
            where += f" at {location}"
        out.append(Finding(
            "builtin-sum", "warning",
            f"{len(adds)} AddBackward0 nodes in {where} add up the elements of one tensor one by "
            f"one: Python's builtin sum() (or a loop of +) over a tensor. One tensor.sum() would "
            f"replace {len(adds)} graph nodes (and as many kernel launches and Python steps) "
            "with one, and also works along any dimension.",
            hint="Use t.sum() (or t.sum(dim=...)) instead of sum(t).",
            module=first.module_path, location=location, nodes=[n.id] + adds[:50],
            data={"adds": len(adds), "source": n.op}))
    return out


CHECK = Check("builtin-sum", "warning",
              "builtin sum() or a + loop over a tensor's elements: one node per element", run)
