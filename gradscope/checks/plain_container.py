"""plain-container: modules or parameters kept in a Python list/tuple/dict/set attribute."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from .registry import Check

_REPLACEMENT = {"list": "nn.ModuleList", "tuple": "nn.ModuleList", "dict": "nn.ModuleDict",
                "set": "nn.ModuleList"}


def run(trace) -> list:
    out = []
    for a in trace.attributes:
        if a["kind"] != "container":
            continue
        hidden_modules = [m for m in a["modules"] if not m["registered"]]
        if not hidden_modules and not a["hidden_parameters"]:
            continue  # everything in it is registered elsewhere too: an alias, not a bug
        if a.get("library") and not a["hidden_parameters"]:
            continue  # weightless helpers a library keeps its own way: not the user's to fix
        owner = module_path(a["model"], a["module"])
        path = f"{owner}.{a['attr']}"
        kinds = sorted({m["type"] for m in hidden_modules})
        contents = names_list([m["path"] for m in hidden_modules]) if hidden_modules else \
            f"{a['parameters']} tensor(s) that require grad"
        replacement = "nn.ParameterList" if not hidden_modules else _REPLACEMENT[a["container"]]
        if a["hidden_parameters"]:
            severity = "error"
            cost = (f"their {a['hidden_parameters']:,} parameters are missing from "
                    "model.parameters() (the optimizer never updates them) and from state_dict()")
        else:
            severity = "warning"
            cost = ("model.train()/eval(), .to(device) and print(model) do not reach them: a "
                    "Dropout or BatchNorm in there stays in training mode during evaluation")
        out.append(Finding(
            "plain-container", severity,
            f"{path} is a plain Python {a['container']} holding {contents} "
            f"({', '.join(kinds) or 'tensors'}). PyTorch only registers modules and parameters "
            f"assigned directly or through its own containers, so {cost}.",
            hint=f"Use {replacement}(...) for {a['attr']} (same indexing and iteration).",
            module=owner, location=a["location"], nodes=_leaf_nodes(trace, a),
            data={"attribute": a["attr"], "container": a["container"],
                  "modules": [m["path"] for m in hidden_modules],
                  "hidden_parameters": a["hidden_parameters"]}))
    return out


def _leaf_nodes(trace, a: dict) -> list:
    path = f"{a['module']}.{a['attr']}" if a["module"] else a["attr"]
    return [leaf["node"] for leaf in trace.leaves
            if (leaf.get("name") or "").startswith(path + "[")]


CHECK = Check("plain-container", "error",
              "modules or parameters held in a plain list/dict are invisible to the model", run)
