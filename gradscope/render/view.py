"""What a drawing shows: the op-level graph, or the graph collapsed to modules at some depth.

A View is renderer-neutral: boxes with a kind, a label and the module path of the cluster they
sit in, and edges between them. ``--depth N`` makes every module N levels below its model one
box (depth 0: each model is one box). Ops of shallower modules stay ops. Too large a view for
``dot`` picks the deepest depth that fits ``max_nodes`` instead (see ``choose_view``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..graph import LEAF_INPUT, LEAF_PARAMETER, Graph
from ..tracedata import Trace

# dot's layout time grows roughly with the square of the node count: ~0.05 s at 700 nodes,
# ~3.5 s at 7,000 (TORCH-FACTS.md). 3,000 nodes keeps a drawing within a few seconds.
DEFAULT_MAX_NODES = 3000


@dataclasses.dataclass
class ViewNode:
    id: str
    kind: str                   # op | parameter | input | unregistered | module | root-op
    lines: list                 # label lines, first is the title
    cluster: tuple              # (model, part, part, ...) of the enclosing clusters; () = none
    members: list = dataclasses.field(default_factory=list)  # graph node ids drawn by this box
    tooltip: str = ""


@dataclasses.dataclass
class View:
    nodes: list
    edges: list                 # (src, dst, label or "")
    depth: Optional[int]        # None: op level
    note: str = ""              # why this level was chosen, when it was not asked for
    cluster_labels: dict = dataclasses.field(default_factory=dict)  # cluster tuple -> label


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def shape_text(shape: Optional[tuple]) -> str:
    return "" if shape is None else str(tuple(shape))


def _path(model: Optional[str], module: Optional[str]) -> tuple:
    if model is None:
        return ()
    return (model,) + (tuple(module.split(".")) if module else ())


_CATEGORIES = (
    ("compute", ("Addmm", "Mm", "Bmm", "Convolution", "Linear", "Matmul", "Baddbmm",
                 "ScaledDotProduct", "Embedding", "Cudnn", "Mkldnn", "Lstm", "Gru", "Rnn")),
    ("norm", ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RmsNorm", "NativeBatchNorm",
              "NativeLayerNorm", "NativeGroupNorm", "CudnnBatchNorm", "MiopenBatchNorm")),
    ("activation", ("Relu", "Gelu", "Sigmoid", "Tanh", "Softmax", "Silu", "Elu", "Hardtanh",
                    "LeakyRelu", "Softplus", "Mish", "Glu")),
    ("loss", ("NllLoss", "MseLoss", "BinaryCrossEntropy", "SmoothL1", "L1Loss", "KlDiv",
              "HuberLoss", "CrossEntropy")),
    ("shape", ("View", "Reshape", "Transpose", "TBackward", "Permute", "Expand", "Unsqueeze",
               "Squeeze", "Split", "Unbind", "Select", "Slice", "Clone", "UnsafeView",
               "AsStrided", "Stack", "Cat", "Index", "Flatten", "Contiguous", "Alias")),
)


def op_category(op: Optional[str]) -> str:
    """compute | norm | activation | loss | shape | other: what the drawing colours by."""
    if not op:
        return "other"
    for category, stems in _CATEGORIES:
        if op.startswith(stems):
            return category
    return "other"


def module_types(trace: Trace) -> dict:
    return {(m["model"], m["name"]): m["type"] for m in trace.modules}


def _saved_per_cluster(trace: Trace) -> dict:
    """Saved-activation bytes of every module subtree, keyed by cluster path: the module's own
    nodes and those of every module inside it (what a cluster's ``saved`` label shows)."""
    totals: dict = {}
    for n in trace.graph.nodes:
        if n.saved and n.model is not None:
            b = n.saved_bytes
            if b:
                path = _path(n.model, n.module)
                for k in range(1, len(path) + 1):
                    totals[path[:k]] = totals.get(path[:k], 0) + b
    return totals


def saved_per_module(trace: Trace) -> dict:
    """``{(model, module): (own, total)}`` saved-activation bytes, each storage counted once:
    ``own`` of the autograd nodes the module created itself, ``total`` with every module inside
    it too: the figure on the module's cluster in the drawing. The modules tables show both."""
    own: dict = {}
    for n in trace.graph.nodes:
        if n.model is not None and n.saved_bytes:
            own[(n.model, n.module)] = own.get((n.model, n.module), 0) + n.saved_bytes
    subtree = _saved_per_cluster(trace)
    keys = {(m["model"], m["name"]) for m in trace.modules} | set(own)
    return {k: (own.get(k, 0), subtree.get(_path(*k), 0)) for k in keys}


def _cluster_labels(trace: Trace, paths: set) -> dict:
    types = module_types(trace)
    saved = _saved_per_cluster(trace)
    labels = {}
    for path in paths:
        for k in range(1, len(path) + 1):
            sub = path[:k]
            if sub in labels:
                continue
            name = ".".join(sub[1:])
            typ = types.get((sub[0], name))
            last = sub[-1] if k > 1 else sub[0]
            label = f"{last}: {typ}" if typ and typ != last else last
            if saved.get(sub):
                label += f"  ·  saved {human_bytes(saved[sub])}"
            labels[sub] = label
    return labels


def op_view(trace: Trace) -> View:
    """Every autograd node as its own box, inside nested module clusters."""
    graph = trace.graph
    roots = set(graph.roots)
    leaf_names = {leaf["node"]: leaf.get("name") for leaf in trace.leaves}
    # A leaf no model owns is drawn beside the op that uses it (inside that op's module).
    orphans = {n.id for n in graph.nodes if n.leaf is not None and n.model is None}
    user_of: dict = {}
    if orphans:
        for src, dst in graph.edges:
            if src in orphans and src not in user_of:
                user_of[src] = dst
    nodes = []
    paths: dict = {}
    shapes: dict = {}
    owner_of = {n.id: (n.model, n.module) for n in graph.nodes if n.id in user_of.values()}
    for n in graph.nodes:
        key = owner_of.get(user_of[n.id]) if n.id in user_of else (n.model, n.module)
        cluster = paths.get(key)
        if cluster is None:
            cluster = paths[key] = _path(*key)
        shape = shapes.get(n.shape)
        if shape is None:
            shape = shapes[n.shape] = shape_text(n.shape)
        if n.leaf is not None:
            kind = n.leaf
            title = n.param if n.leaf == LEAF_PARAMETER else (
                "input" if n.leaf == LEAF_INPUT else
                f"{leaf_names.get(n.id) or 'leaf'} (unregistered)")
            lines = [title.rpartition(".")[2] if n.leaf == LEAF_PARAMETER else title, shape]
            if n.leaf == LEAF_PARAMETER and n.shape is not None:
                count = 1
                for d in n.shape:
                    count *= d
                lines.append(f"{human_count(count)} params")
        else:
            kind = "root" if n.id in roots else f"op-{op_category(n.op)}"
            lines = [n.op or "?", shape]
            if n.saved:
                saved = n.saved_bytes
                if saved:
                    lines.append(f"saved {human_bytes(saved)}")
        # The tooltip carries what the label leaves out: the full module path and parameter name.
        tip = n.param if n.param else (".".join(cluster) if cluster else "")
        nodes.append(ViewNode(n.id, kind, [x for x in lines if x], cluster, [n.id], tip))
    edges = [(src, dst, "") for src, dst in graph.edges]
    return View(nodes, edges, None,
                cluster_labels=_cluster_labels(trace, {c for c in paths.values() if c}))


def collapsed_view(trace: Trace, depth: int, group_outside: bool = False) -> View:
    """Modules ``depth`` levels below their model drawn as one box each; with ``group_outside``
    the ops outside every model become one box too."""
    graph = trace.graph
    types = module_types(trace)
    shape_of = {}
    group_of: dict = {}
    boxes: dict = {}     # group id -> ViewNode
    stats: dict = {}     # group id -> [ops, params numel, saved bytes]
    op_nodes = []
    roots = set(graph.roots)
    for n in graph.nodes:
        shape_of[n.id] = n.shape
        path = _path(n.model, n.module)
        if not path and group_outside:
            path = ("(outside models)",)
        if path and len(path) - 1 >= depth:
            key = path[: depth + 1]
            if key not in group_of:
                gid = f"g{len(boxes)}"
                group_of[key] = gid
                name = ".".join(key[1:])
                title = key[-1] if len(key) > 1 else key[0]
                typ = types.get((key[0], name))
                boxes[gid] = ViewNode(gid, "module",
                                      [f"{title}: {typ}" if typ and typ != title else title],
                                      key[:-1], [], ".".join(key))
                stats[gid] = [0, 0, 0]
            gid = group_of[key]
            box = boxes[gid]
            box.members.append(n.id)
            s = stats[gid]
            if n.leaf is None:
                s[0] += 1
            elif n.shape is not None and n.leaf == LEAF_PARAMETER:
                numel = 1
                for d in n.shape:
                    numel *= d
                s[1] += numel
            s[2] += n.saved_bytes
            group_of[n.id] = gid
        else:
            group_of[n.id] = n.id
            op_nodes.append(n)
    sub = op_view(Trace(graph=Graph(op_nodes, [], [r for r in graph.roots if r in
                                                      {x.id for x in op_nodes}]),
                        modules=trace.modules))
    for gid, box in boxes.items():
        ops, numel, saved = stats[gid]
        detail = f"{ops} ops"
        if numel:
            detail += f" · {human_count(numel)} params"
        box.lines.append(detail)
        if saved:
            box.lines.append(f"saved {human_bytes(saved)}")
        if roots & set(box.members):
            box.kind = "module-root"
    edges = []
    seen = set()
    for e in graph.edges:
        a, b = group_of[e.src], group_of[e.dst]
        if a == b or (a, b) in seen:
            continue
        seen.add((a, b))
        label = shape_text(shape_of.get(e.src)) if (a in boxes or b in boxes) else ""
        edges.append((a, b, label))
    nodes = list(boxes.values()) + sub.nodes
    paths = {v.cluster for v in nodes if v.cluster}
    return View(nodes, edges, depth, cluster_labels=_cluster_labels(trace, paths))


def max_module_depth(trace: Trace) -> int:
    return max((len(n.module.split(".")) if n.module else 0
                for n in trace.graph.nodes if n.model is not None), default=0)


def choose_view(trace: Trace, depth: Optional[int] = None,
                max_nodes: int = DEFAULT_MAX_NODES) -> View:
    """The asked-for depth, or op level when it fits ``max_nodes``, else the deepest depth
    that fits (saying so in ``view.note``)."""
    if depth is not None:
        return collapsed_view(trace, depth)
    if len(trace.graph.nodes) <= max_nodes:
        return op_view(trace)
    for d in range(max_module_depth(trace), -1, -1):
        view = collapsed_view(trace, d)
        if len(view.nodes) <= max_nodes:
            view.note = (f"The op-level graph has {len(trace.graph.nodes):,} nodes, more than "
                         f"the drawing budget of {max_nodes:,}; drawn collapsed to module depth "
                         f"{d} ({len(view.nodes):,} boxes). The JSON and DOT files keep every node.")
            return view
    view = collapsed_view(trace, 0, group_outside=True)
    view.note = (f"The graph has {len(trace.graph.nodes):,} nodes, mostly ops outside any module; "
                 "drawn as one box per model plus one for those ops. The JSON and DOT files keep "
                 "every node.")
    return view


# -- focus and fold ------------------------------------------------------------------------------
def focus_view(view: View, module: str) -> View:
    """Only the nodes inside ``module`` (``model.layer1`` or ``layer1``) and, dimmed, the nodes
    that feed them or use their outputs."""
    wanted = tuple(module.split("."))

    def inside(cluster: tuple) -> bool:
        return cluster[: len(wanted)] == wanted or cluster[1: len(wanted) + 1] == wanted

    keep = {v.id for v in view.nodes if v.cluster and inside(v.cluster)}
    if not keep:
        known = sorted({".".join(v.cluster) for v in view.nodes if v.cluster})
        import difflib

        close = difflib.get_close_matches(module, known, n=5, cutoff=0.4)
        shallow = sorted(known, key=lambda k: (k.count("."), k))  # then the top-level ones
        close += [k for k in shallow if k not in close][: max(0, 6 - len(close))]
        from ..errors import InputError

        raise InputError(f"--focus {module!r}: no node of the graph belongs to that module. "
                         f"Modules with nodes include: {', '.join(close)}.")
    context = {a for a, b, _ in view.edges if b in keep} | {b for a, b, _ in view.edges
                                                            if a in keep}
    nodes = []
    for v in view.nodes:
        if v.id in keep:
            nodes.append(v)
        elif v.id in context:
            nodes.append(dataclasses.replace(v, kind="context", cluster=()))
    ids = {v.id for v in nodes}
    edges = [e for e in view.edges if e[0] in ids and e[1] in ids]
    return View(nodes, edges, view.depth, note=f"Focus on {module}: {len(keep)} nodes, and the "
                f"{len(nodes) - len(keep)} nodes around it (dimmed).",
                cluster_labels=view.cluster_labels)


def _runs(indices: list, signature: dict) -> list:
    """Maximal runs of consecutive indices with one signature, longest first."""
    runs, start = [], 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1 or \
                signature[indices[k]] != signature[indices[start]]:
            if k - start >= 2:
                runs.append(indices[start:k])
            start = k
    return runs


def fold_view(view: View) -> View:
    """Repeated identical blocks (``blocks.0`` ... ``blocks.11``) drawn once in full; the others
    of the run become one box marked ``x11``."""
    members: dict = {}  # (prefix, index) -> [ViewNode]
    for v in view.nodes:
        c = v.cluster
        for k in range(1, len(c)):
            if c[k].isdigit():
                members.setdefault((c[:k], int(c[k])), []).append(v)
    signature = {key: tuple(sorted((n.kind, tuple(n.lines)) for n in vs))
                 for key, vs in members.items()}
    by_prefix: dict = {}
    for prefix, index in members:
        by_prefix.setdefault(prefix, []).append(index)
    replace: dict = {}  # node id -> fold box id
    boxes = []
    for prefix, indices in sorted(by_prefix.items(), key=lambda kv: len(kv[0])):
        indices.sort()
        sig = {i: signature[(prefix, i)] for i in indices}
        for run in _runs(indices, sig):
            rest = run[1:]
            ids = [n.id for i in rest for n in members[(prefix, i)] if n.id not in replace]
            if not ids:
                continue
            box_id = f"fold{len(boxes)}"
            name = ".".join(prefix[1:])
            label = f"{name}.{rest[0]}–{rest[-1]}" if len(rest) > 1 else f"{name}.{rest[0]}"
            boxes.append(ViewNode(box_id, "module", [f"{label}  x{len(rest)}",
                                                     f"same as {name}.{run[0]}"],
                                  prefix, ids, ".".join(prefix)))
            for i in ids:
                replace[i] = box_id
    if not boxes:
        return view
    nodes = [v for v in view.nodes if v.id not in replace] + boxes
    edges, seen = [], set()
    for a, b, label in view.edges:
        a, b = replace.get(a, a), replace.get(b, b)
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            edges.append((a, b, label))
    note = (view.note + " " if view.note else "") + (
        f"Folded {len(replace)} nodes of repeated blocks into {len(boxes)} box(es).")
    return View(nodes, edges, view.depth, note=note, cluster_labels=view.cluster_labels)
