"""unregistered-parameter: a leaf that requires grad feeds the loss but belongs to no model."""
from __future__ import annotations

from ..findings import Finding
from ._common import consumers, names_list, shape_str
from .registry import Check


def _stem(name: str) -> str:
    # heads[0].weight and heads[1].bias share one cause: the attribute `heads`
    return name.split("[", 1)[0].split(".", 1)[0] if "[" in name else name


def run(trace) -> list:
    groups: dict = {}
    for leaf in trace.leaves:
        if leaf.get("origin") == "built-in-forward":
            continue  # layer-in-forward reports the cause
        if leaf.get("in_optimizer"):
            continue  # handed to an optimizer by hand: it is trained
        name = leaf.get("name")
        key = ("attr", leaf.get("model_hint"), _stem(name)) if name else ("node", leaf["node"])
        groups.setdefault(key, []).append(leaf)
    out = []
    for key, leaves in groups.items():
        out.append(_finding(trace, key, leaves))
    return out


def _attribute_record(trace, name: str):
    stem = _stem(name)
    for a in trace.attributes:
        path = f"{a['module']}.{a['attr']}" if a["module"] else a["attr"]
        if path == stem or name == path:
            return a
    return None


def _finding(trace, key, leaves: list) -> Finding:
    ids = {leaf["node"] for leaf in leaves}
    nodes = [trace.graph.node(i) for i in sorted(ids)]
    users = consumers(trace, ids)
    where_nodes = [trace.graph.node(u) for u in users]
    used_in = next((n.module_path for n in where_nodes if n.module_path), None)
    model = next((n.model for n in where_nodes if n.model), None)
    if key[0] == "attr":
        names = sorted(leaf["name"] for leaf in leaves)
        what = names_list(names)
        record = _attribute_record(trace, names[0])
        location = record["location"] if record else None
        if record and record["kind"] == "container":
            hint = (f"Hold them in nn.ModuleList / nn.ModuleDict (or nn.ParameterList) instead of a "
                    f"plain {record['container']}, so model.parameters() includes them.")
        else:
            hint = ("Make it an nn.Parameter assigned to a module attribute "
                    "(self.w = nn.Parameter(...)), or register it with register_parameter.")
    else:
        n = nodes[0]
        what = f"a tensor of shape {shape_str(n.shape)}"
        location = None
        hint = ("Make it an nn.Parameter of a module (self.w = nn.Parameter(...)) or pass it to "
                "the optimizer explicitly; if it is an input, it need not require grad.")
    owner = f" of {model}" if model else " of any traced model"
    many = len(leaves) > 1
    # A tensor reached through a module attribute is a parameter the user meant to train. One of
    # unknown origin that no optimizer holds is an error when optimizers stepped (nothing will
    # ever update it); without optimizer information it may be deliberate (x.requires_grad_()
    # inside forward, input embeddings made to require grad for adapters): said mildly.
    in_opt = [leaf.get("in_optimizer") for leaf in leaves]
    severity = "error" if key[0] == "attr" or False in in_opt else "info"
    return Finding(
        "unregistered-parameter", severity,
        f"{what} {'require' if many else 'requires'} grad and {'feed' if many else 'feeds'} the "
        f"loss{' through ' + used_in if used_in else ''}, but {'are not parameters' if many else 'is not a parameter'}"
        f"{owner}: model.parameters() does not include {'them' if many else 'it'}, so an "
        f"optimizer built from it never updates {'them' if many else 'it'} and state_dict() does "
        "not save them.",
        hint=hint, module=used_in, location=location,
        nodes=sorted(ids) + users,
        data={"names": [leaf.get("name") for leaf in leaves],
              "shapes": [list(n.shape) if n.shape is not None else None for n in nodes]})


CHECK = Check("unregistered-parameter", "error",
              "a tensor that requires grad feeds the loss but is no parameter of the model", run)
