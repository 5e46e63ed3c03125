"""softmax-batch-dim: softmax / log_softmax over the batch dimension of a class output.

``F.log_softmax(logits, dim=0)`` on an ``(N, C)`` output normalises across the N samples, not
across the C classes: each sample's "probabilities" depend on the rest of the batch and do not
sum to one, yet the loss trains happily on them. So does ``F.softmax(x)`` without ``dim`` on a
3-d ``(N, L, C)`` input (torch's implicit choice is then dim 0). Fires only when the softmax
output reaches the loss through element-wise ops, views and reductions: silent when a layer
follows (attention over a sequence axis, then a matmul), when the tensor is transposed on the
way (a pointer network normalising over positions first), when its last dimension has size 1
(attention pooling over a bag of instances) and for square ``(N, N)`` similarity matrices
(CLIP's symmetric loss normalises each direction on purpose).
"""
from __future__ import annotations

from ..findings import Finding
from ._graph import Adjacency
from .registry import Check

SOFTMAX_OPS = {"SoftmaxBackward0": "softmax", "LogSoftmaxBackward0": "log_softmax"}
# Ops after which the softmax output is no longer the model's class distribution (a layer,
# lower-cased: AddmmBackward0 is a Linear), or no longer laid out batch-first (a transpose).
_STOP_MARKS = ("mm", "mv", "convolution", "embedding", "softmax", "linear", "matmul", "cudnn",
               "mkldnn", "attention", "rnn", "lstm", "gru", "einsum", "tbackward", "transpose",
               "permute")
MAX_HOPS = 12


def _feeds_loss(adj: Adjacency, start: str, roots: set) -> bool:
    """Does ``start``'s output reach a root (the loss) without passing another layer?"""
    frontier, seen = [start], {start}
    for _ in range(MAX_HOPS):
        nxt = []
        for nid in frontier:
            if nid in roots and nid != start:
                return True
            for c in adj.consumers.get(nid, []):
                op = (adj.op.get(c) or "").lower()
                if c in seen or any(mark in op for mark in _STOP_MARKS):
                    continue
                seen.add(c)
                nxt.append(c)
        if not nxt:
            return False
        frontier = nxt
    return False


def _call_site(trace, fn: str, shape: list):
    sites = {c["location"] for c in trace.softmax_calls
             if c.get("fn") == fn and shape in (c.get("shapes") or [c.get("shape")])
             and c.get("dim") in (0, -len(shape), None) and c.get("location")}
    return sites.pop() if len(sites) == 1 else None


def run(trace) -> list:
    if not trace.node_args:
        return []
    adj = Adjacency.of(trace.graph)
    roots = set(trace.graph.roots)
    out = []
    for n in trace.graph.nodes:
        fn = SOFTMAX_OPS.get(n.op or "")
        dim = (trace.node_args.get(n.id) or {}).get("dim")
        shape = list(n.shape or [])
        if fn is None or dim is None or len(shape) < 2:
            continue
        if (dim + len(shape) if dim < 0 else dim) != 0 or shape[0] < 2 or shape[-1] == 1 \
                or (len(shape) == 2 and shape[0] == shape[1]):
            continue
        if not _feeds_loss(adj, n.id, roots):
            continue
        site = _call_site(trace, fn, shape)
        producer = next((trace.graph.node(p) for p in adj.producers.get(n.id, [])), None)
        source = producer.module_path if producer is not None else None
        dims = "x".join(map(str, shape))
        of = f"the {dims} output of {source}" if source else f"a {dims} tensor"
        inside = f" in {n.module_path}" if n.module_path else ""
        across = f"the {shape[1]} classes" if len(shape) == 2 else \
            f"its class dimension (dims 1 to {len(shape) - 1} hold {dims.split('x', 1)[1]})"
        out.append(Finding(
            "softmax-batch-dim", "error",
            f"{fn} over dim 0 of {of}{inside}"
            f"{' at ' + site if site else ''} normalises across the {shape[0]} entries of dim "
            f"0, the batch, instead of across {across}, and its result feeds the loss: each "
            "sample's probabilities depend on the rest of the batch and do not sum to 1, so the "
            "model is trained on the wrong target.",
            hint=f"Normalise over the class dimension: {fn}(logits, dim=1) (or dim=-1 for "
                 "(N, L, C) outputs), always with an explicit dim; with nn.CrossEntropyLoss, "
                 "pass the raw logits instead.",
            module=n.module_path or source, location=site, nodes=[n.id],
            data={"op": n.op, "shape": shape, "dim": dim}))
    return out


CHECK = Check("softmax-batch-dim", "error",
              "softmax/log_softmax over the batch dimension of an (N, C) output that feeds the "
              "loss", run)
