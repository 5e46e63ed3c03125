"""tied-weights: one Parameter under several names or used at several places (info).

Several uses are reported once per module (a layer applied twice), or once per model when every
parameter of it is used the same number of times (the whole model ran twice before one
backward: siamese inputs, two views of a batch), not once per parameter."""
from __future__ import annotations

from collections import Counter
from itertools import compress, repeat
from operator import is_not

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from .registry import Check

_HINT_TIE = ("Nothing to fix if intended. When saving, load_state_dict restores the tie only if "
             "the model re-ties in __init__.")
_HINT_USES = "Nothing to fix if intended."
# nn.RNN/GRU/LSTM and their cells: the recurrent weights are used once per time step by design
# (on CPU, and for packed sequences, the graph holds one node per step).
_RECURRENT = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _recurrent(name: str) -> bool:
    return name.rpartition(".")[2].startswith(_RECURRENT)


def _by_design(name: str) -> bool:
    """Recurrent weights (one use per time step) and a parametrization's ``original``
    (spectral_norm uses it in its power iteration and again to scale it): several uses by
    construction, not a shared module."""
    return _recurrent(name) or ".parametrizations." in f".{name}"


def run(trace) -> list:
    out = []
    graph = trace.graph
    model_of, params = graph.column("model"), graph.column("param")
    # Uses by the model's own ops only: a weight penalty computed outside the model
    # (sum(p.pow(2).sum() for p in model.parameters())) is not a second run of it.
    # (By positions, from the columns: no row per node or edge is made for this.)
    counts = Counter(compress(graph.src, map(is_not, map(model_of.__getitem__, graph.dst),
                                             repeat(None))))
    leaf_at = {(model_of[i], p): i for i, p in enumerate(params) if p}
    if not any(counts.get(i, 0) > 1 for i in leaf_at.values()) \
            and not any(p.get("aliases") for p in trace.parameters):
        return []  # every parameter used once, under one name: the usual
    shared: dict = {}   # model -> [(parameter, node, uses)] used more than once
    in_graph: dict = {}  # model -> parameters with a node in the graph
    for p in trace.parameters:
        pos = leaf_at.get((p["model"], p["name"]))
        if pos is None:
            node, n_uses = None, 0
        else:
            in_graph[p["model"]] = in_graph.get(p["model"], 0) + 1
            n_uses = counts.get(pos, 0)
            node = graph.id_of(pos)
        if n_uses <= 1 and not p.get("aliases"):
            continue  # the usual: one use, one name
        if p.get("aliases"):
            names = [p["name"]] + list(p["aliases"])
            out.append(Finding(
                "tied-weights", "info",
                f"{' = '.join(names)} are one tensor (tied weights) in {p['model']}; the "
                "gradients of all uses are summed into one .grad before the optimizer step.",
                hint=_HINT_TIE, module=module_path(p["model"], p["module"]),
                nodes=[node] if node else [], data={"names": names, "uses": n_uses}))
        elif n_uses > 1 and not _by_design(p["name"]):
            shared.setdefault(p["model"], []).append((p, node, n_uses))
        elif n_uses > 1:
            in_graph[p["model"]] -= 1  # not a sign that the whole model ran twice either
    for model, rows in shared.items():
        counts = {n for _, _, n in rows}
        if len(rows) == in_graph.get(model) and len(rows) > 1 and len(counts) == 1:
            k = counts.pop()
            out.append(Finding(
                "tied-weights", "info",
                f"Every parameter of {model} ({len(rows)}) is used {k} times in the graph: "
                f"the model ran {k} times before one backward, and each .grad is the sum "
                f"over the {k} runs.",
                hint=_HINT_USES, module=model, nodes=[node for _, node, _ in rows][:50],
                data={"names": [p["name"] for p, _, _ in rows], "uses": k, "whole_model": True}))
            continue
        by_module: dict = {}
        for p, node, n in rows:
            by_module.setdefault(p["module"], []).append((p, node, n))
        for module, group in by_module.items():
            names = [p["name"] for p, _, _ in group]
            most = max(n for _, _, n in group)
            out.append(Finding(
                "tied-weights", "info",
                f"{names_list(names, 4)} {'is' if len(names) == 1 else 'are'} used at up to "
                f"{most} places in the graph (a shared module) in {model}; the gradients of "
                "all uses are summed into one .grad before the optimizer step.",
                hint=_HINT_USES, module=module_path(model, module),
                nodes=[node for _, node, _ in group],
                data={"names": names, "uses": most}))
    return out


CHECK = Check("tied-weights", "info",
              "one parameter under several names or used several times: gradients add up", run)
