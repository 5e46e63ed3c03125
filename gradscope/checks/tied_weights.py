"""tied-weights: one Parameter under several names or used at several places (info)."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from .registry import Check


def run(trace) -> list:
    out = []
    uses: dict = {}
    for e in trace.graph.edges:
        uses[e.src] = uses.get(e.src, 0) + 1
    leaf_of = {(n.model, n.param): n.id for n in trace.graph.nodes if n.param}
    for p in trace.parameters:
        node = leaf_of.get((p["model"], p["name"]))
        n_uses = uses.get(node, 0) if node else 0
        if not p.get("aliases") and n_uses <= 1:
            continue
        names = [p["name"]] + list(p.get("aliases", []))
        what = (f"{' = '.join(names)} are one tensor (tied weights)" if len(names) > 1
                else f"{p['name']} is used at {n_uses} places in the graph (a shared module)")
        out.append(Finding(
            "tied-weights", "info",
            f"{what} in {p['model']}; the gradients of all uses are summed into one .grad "
            "before the optimizer step.",
            hint="Nothing to fix if intended. When saving, load_state_dict restores the tie only "
                 "if the model re-ties in __init__.",
            module=module_path(p["model"], p["module"]),
            nodes=[node] if node else [],
            data={"names": names, "uses": n_uses}))
    return out


CHECK = Check("tied-weights", "info",
              "one parameter under several names or used several times: gradients add up", run)
