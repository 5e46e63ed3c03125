"""layer-in-forward: a layer constructed while the model's forward runs (seed 003)."""
from __future__ import annotations

import os

from ..findings import Finding
from ..graph import module_path
from ._common import calls_of, consumers, numel, plural, shape_str
from .registry import Check


def run(trace) -> list:
    findings = []
    by_construction: dict = {}
    for leaf in trace.leaves:
        if leaf.get("origin") == "built-in-forward":
            by_construction.setdefault(leaf["construction"], set()).add(leaf["node"])
    for idx, c in enumerate(trace.constructions):
        findings.append(_constructed(trace, c, by_construction.get(idx, set())))
    findings.extend(_parameter_free(trace))
    return findings


def _constructed(trace, c: dict, leaves: set) -> Finding:
    parent = module_path(c["model"], c["module"]) or "a traced model"
    forwards = calls_of(trace, c["model"], c["module"]) or 1
    per = c["count"] / forwards
    per_text = "once per forward" if per == 1 else (
        f"{per:g} times per forward" if per >= 1 else f"in {c['count']} of {forwards} forwards")
    weights = " + ".join(shape_str(s) for s in c["params"].values() if s) or "lazy"
    total = sum(numel(s) for s in c["params"].values() if s)
    nodes = sorted(leaves) + consumers(trace, leaves)
    data = {"type": c["type"], "count": c["count"], "forwards": forwards,
            "parameters": total, "assigned": c["assigned"]}
    typo = _init_typo(trace, c)
    if typo:
        data["init_typo"] = typo
    if c["assigned"] and c["count"] == 1:
        prefix = c["assigned"].split(".", 1)[1] + "." if "." in c["assigned"] else ""
        nodes = [n.id for n in trace.graph.nodes
                 if n.model == c["model"] and n.param and n.param.startswith(prefix)]
        return Finding(
            "layer-in-forward", "warning",
            f"{c['type']} is constructed inside {parent}.forward() at {c['location']} and "
            f"assigned as {c['assigned']} the first time forward runs. It is built once, but after "
            f"any optimizer was created from model.parameters(), so its {total:,} weights may "
            "never be updated, and a model reloaded from a state_dict will not have it.",
            hint=f"Create it in __init__ (self.{c['assigned'].rsplit('.', 1)[-1]} = "
                 f"nn.{c['type']}(...)) so it exists before the optimizer; see also "
                 "param-not-in-optimizer.",
            module=parent, location=c["location"], nodes=nodes, data=data)
    extra = (f" {typo[1]} defines {typo[0]}, not __init__: that method never runs." if typo else "")
    return Finding(
        "layer-in-forward", "error",
        f"{c['type']} is constructed inside {parent}.forward() at {c['location']}, {per_text} "
        f"({plural(c['count'], 'time')} in this run). Every call creates new, randomly initialised "
        f"weights ({weights}, {total:,} values) that are not in model.parameters(): no optimizer "
        f"ever updates them, so this layer cannot learn.{extra}",
        hint=f"Create the layer once in __init__ (self.layer = nn.{c['type']}(...)) and only call "
             "it in forward(); for layers without weights use torch.nn.functional (F.relu, ...).",
        module=parent, location=c["location"], nodes=nodes, data=data)


def _init_typo(trace, c: dict):
    for m in trace.modules:
        if m["model"] == c["model"] and m["name"] == c["module"] and m.get("init_typo"):
            return (m["init_typo"], m["type"])
    return None


def _not_the_users(location, trace) -> bool:
    """Library code: an installed package, or a file outside both the working directory
    (locations inside it are stored relative) and the traced file's folder (a library on
    PYTHONPATH, installed with pip --target or in editable mode elsewhere)."""
    path = (location or "").replace("\\", "/").rsplit(":", 1)[0]
    if "/site-packages/" in path or "/dist-packages/" in path:
        return True
    if not path.startswith("/"):
        return False  # relative: inside the working directory
    target = str(trace.run.get("target") or "").rsplit(":", 1)[0]
    if not target:
        return True
    folder = os.path.dirname(os.path.abspath(target)).replace("\\", "/").rstrip("/") + "/"
    return not path.startswith(folder)


def _parameter_free(trace) -> list:
    held = {(a["model"], a["module"]) for a in trace.attributes if a["kind"] == "container"}
    out = []
    for m in trace.modules:
        if m["registered"] or m.get("has_parameters") or not m.get("rebuilt"):
            continue
        parent_name = m["name"].rsplit(".<", 1)[0] if ".<" in m["name"] else ""
        if (m["model"], parent_name) in held or _not_the_users(m.get("location"), trace):
            # Hugging Face models build CrossEntropyLoss() in forward: not the user's to fix
            continue
        out.append(Finding(
            "layer-in-forward", "info",
            f"{m['type']} (no weights) is constructed anew in every forward of "
            f"{module_path(m['model'], parent_name)} (called at {m['location']}). Harmless for "
            "training, but it costs an object per call and hides the layer from print(model).",
            hint="Create it once in __init__, or call the functional form (F.relu, F.dropout "
                 "with training=self.training).",
            module=module_path(m["model"], m["name"]), location=m["location"],
            data={"type": m["type"], "calls": m["calls"]}))
    return out


CHECK = Check("layer-in-forward", "error",
              "a layer with weights is constructed inside forward(), so its weights never train",
              run)
