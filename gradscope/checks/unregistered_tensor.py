"""unregistered-tensor: a plain tensor module attribute, neither Parameter nor buffer (seed 000)."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from .registry import Check


def run(trace) -> list:
    leaf_names = {leaf.get("name") for leaf in trace.leaves}
    groups: dict = {}
    for a in trace.attributes:
        if a["kind"] != "tensor":
            continue
        path = f"{a['module']}.{a['attr']}" if a["module"] else a["attr"]
        if path in leaf_names:
            continue  # a trainable tensor in the graph: unregistered-parameter explains it
        groups.setdefault((a["type"], a["attr"]), []).append(a)
    out = []
    for (cls, attr), items in groups.items():
        paths = [f"{module_path(a['model'], a['module'])}.{attr}" for a in items]
        first = items[0]
        shapes = ", ".join(dict.fromkeys(str(tuple(a["shape"])) for a in items))
        # requires_grad on a non-leaf is autograd history (attribute-keeps-graph), not a
        # tensor to train: making it a Parameter would train running statistics
        trainable = any(a["requires_grad"] and a.get("is_leaf", True) for a in items)
        fix = ("self.{0} = nn.Parameter(...)" if trainable else
               "self.register_buffer('{0}', tensor) (persistent=False if it should not be saved)")
        many = len(paths) > 1
        it = "them" if many else "it"
        out.append(Finding(
            "unregistered-tensor", "warning",
            f"{names_list(paths)} {'are plain tensor attributes' if many else 'is a plain tensor attribute'} "
            f"of {cls} (shape {shapes}, on {first['device']}), neither a Parameter nor a buffer: "
            f"state_dict() does not save {it}, model.to(device) does not move {it} and .half() "
            f"does not cast {it}, so a reloaded or moved model silently uses stale or "
            "wrong-device values.",
            hint="Register it: " + fix.format(attr) + ", and assign to it with "
                 f"self.{attr}.copy_(...) or by re-assigning the registered name.",
            module=paths[0].rsplit(".", 1)[0], location=first["location"],
            data={"attribute": attr, "class": cls, "paths": paths, "shape": first["shape"],
                  "requires_grad": trainable}))
    return out


CHECK = Check("unregistered-tensor", "warning",
              "a tensor attribute that is neither Parameter nor buffer: not saved, not moved", run)
