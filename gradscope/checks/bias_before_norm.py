"""bias-before-norm: a Linear/Conv bias that the BatchNorm right after it cancels."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list
from ._graph import Adjacency
from .registry import Check

_LAYERS = ("ConvolutionBackward", "AddmmBackward", "ConvolutionBackwardBackward",
           "CudnnConvolutionBackward", "MkldnnConvolutionBackward")


def _is_batchnorm(op: str) -> bool:
    return "BatchNorm" in op and "Backward" in op


def run(trace) -> list:
    trained = {(m["model"], m["name"]) for m in trace.modules if m.get("batch_stats")}
    if not trained or not any(op and _is_batchnorm(op) for op in trace.graph.ops()):
        return []
    adj = Adjacency.of(trace.graph)
    pairs: dict = {}
    for n in trace.graph.nodes:
        if not n.op or not _is_batchnorm(n.op) or (n.model, n.module) not in trained:
            continue
        for src in adj.source_through_views(n.id):
            layer = trace.graph.node(src)
            if not (layer.op or "").startswith(_LAYERS):
                continue
            channels = n.shape[1] if n.shape and len(n.shape) >= 2 else None
            if layer.op.startswith("AddmmBackward") and n.shape and \
                    any(d != 1 for d in n.shape[2:]):
                # A Linear's bias runs along its last dim; the norm's channels are dim 1. Only
                # (N, C) (or (N, C, 1, ...)) lines them up: a Linear on (N, L, C) before
                # BatchNorm1d(L) adds a bias that varies inside each norm channel.
                continue
            # the bias must line up with the norm's channels: a Linear(16, 512) viewed as
            # (32, 4, 4) before BatchNorm2d(32) mixes channels, and its bias is not cancelled
            bias = [p for p in adj.producers.get(src, [])
                    if (trace.graph.node(p).param or "").rpartition(".")[2] == "bias"
                    and trace.graph.node(p).model == layer.model
                    and trace.graph.node(p).shape == (channels,)]
            if bias:
                key = (layer.module_path, n.module_path)
                pairs.setdefault(key, [layer.id, n.id, bias[0]])
    if not pairs:
        return []
    pairs = dict(sorted(pairs.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")))
    names = [f"{a} -> {b}" for a, b in pairs]
    nodes = [i for ids in pairs.values() for i in ids]
    first = next(iter(pairs))
    return [Finding(
        "bias-before-norm", "info",
        f"{len(pairs)} layer{'s' if len(pairs) > 1 else ''} with bias=True feed{'' if len(pairs) > 1 else 's'} "
        f"a BatchNorm directly ({names_list(names, 4)}): batch norm subtracts the per-channel "
        "mean, which removes a per-channel bias exactly, so those bias values are trained for "
        "nothing (memory, optimizer state, and drift under weight decay).",
        hint="Create the Linear/Conv with bias=False when a BatchNorm follows it; the "
             "BatchNorm's own shift (beta) does the job.",
        module=first[0], nodes=nodes, data={"pairs": [list(k) for k in pairs]})]


CHECK = Check("bias-before-norm", "info", "a layer's bias cancelled by the BatchNorm after it",
              run)
