"""attribute-keeps-graph: a module attribute or buffer that holds autograd history (seed 000).

Running statistics computed from the activations without ``.detach()`` (the notes found the
detach "unnecessary") stay chained to every earlier step's graph: each forward adds to the
chain, and everything those graphs saved for backward stays in memory.
"""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from .registry import Check


def run(trace) -> list:
    # history that survived a backward call: built before it and extended after it (a
    # tensor kept for the loss or for plotting holds one step's graph, and is fine)
    items = [a for a in trace.attributes
             if a["kind"] in ("tensor", "buffer", "container") and a.get("backwards_crossed", 0) > 0]
    if not items:
        return []
    paths = [f"{module_path(a['model'], a['module'])}.{a['attr']}" for a in items]
    worst = max(items, key=lambda a: a["history"])
    many = len(items) > 1
    after = f", built across {worst['backwards_crossed'] + 1} backward calls"
    attr = items[0]["attr"]
    return [Finding(
        "attribute-keeps-graph", "warning",
        f"{names_list(paths)} {'hold' if many else 'holds'} autograd history "
        f"(requires_grad=True{', grad_fn=' + worst['grad_fn'] if worst.get('grad_fn') else ''}): computed from the activations "
        f"without .detach(), {'they keep' if many else 'it keeps'} the graphs that produced "
        f"{'them' if many else 'it'} alive, {worst['history']:,} autograd nodes{after}. Each "
        "forward chains a new graph onto the old one, so the chain and the memory it holds "
        "grow with every step, and a backward through it would reach into every earlier step.",
        hint=f"Store a detached value: self.{attr} = new_value.detach() (or update it under "
             "torch.no_grad()), and register it with self.register_buffer(...) so that "
             "state_dict() and .to(device) include it.",
        module=paths[0].rsplit(".", 1)[0], location=items[0]["location"],
        data={"paths": paths, "history": {p: a["history"] for p, a in zip(paths, items)}})]


CHECK = Check("attribute-keeps-graph", "warning",
              "a module attribute or buffer holding autograd history: memory grows every step",
              run)
