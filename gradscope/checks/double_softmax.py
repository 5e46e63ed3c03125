"""double-softmax: softmax (or sigmoid) output fed to a loss that applies it again (seeds 000/001)."""
from __future__ import annotations

from ..findings import Finding
from ._graph import Adjacency
from .registry import Check

# loss-side node -> the activation that must not feed it, what to say, the loss function
PAIRS = {
    "LogSoftmaxBackward0": ("SoftmaxBackward0", "softmax", "CrossEntropyLoss / F.cross_entropy "
                            "(which applies log_softmax to raw logits)", "cross_entropy"),
    "BinaryCrossEntropyWithLogitsBackward0": ("SigmoidBackward0", "sigmoid",
                                              "BCEWithLogitsLoss (which applies sigmoid itself)",
                                              "binary_cross_entropy_with_logits"),
}


def _loss_site(trace, function: str):
    """``file:line`` where the loss was called (gradscope trace records it), when the program
    calls it from one place only; with several call sites the graph cannot tell which one."""
    sites = {s["location"] for s in trace.loss_sites if s.get("op") == function
             and s.get("location")}
    return sites.pop() if len(sites) == 1 else None


def run(trace) -> list:
    if not trace.graph.ops() & PAIRS.keys():
        return []
    adj = Adjacency.of(trace.graph)
    found: dict = {}
    for n in trace.graph.nodes:
        pair = PAIRS.get(n.op or "")
        if pair is None:
            continue
        bad_op, name, loss, _ = pair
        # BCE-with-logits' second input is the target: a sigmoid there (soft targets from
        # another head, mutual learning) is correct; only the first input must be logits.
        for src in adj.source_through_views(n.id, first=n.op.startswith("BinaryCross")):
            if adj.op.get(src) == bad_op:
                act = trace.graph.node(src)
                key = (act.module_path, n.module_path)
                found.setdefault(key, (act, n, name, loss, pair[3]))
    out = []
    for (act_path, loss_path), (act, loss_node, name, loss, function) in found.items():
        where = act_path or "code outside the model"
        site = _loss_site(trace, function)
        called = f" called at {site}" if site else ""
        remove_from = "from the model's forward" if act_path else "before the loss"
        out.append(Finding(
            "double-softmax", "warning",
            f"The {name} output of {where} is fed to {loss} in {loss_path or 'the loss'}{called}: the "
            f"{name} is applied twice. The loss then sees squashed probabilities instead of "
            "logits, so gradients shrink and training stalls or converges to a worse model.",
            hint=f"Remove the {name} {remove_from} and feed raw logits to the loss; apply "
                 f"{name} only when you need probabilities (inference, metrics).",
            module=act_path, location=site, nodes=[act.id, loss_node.id],
            data={"activation": act.op, "loss_node": loss_node.op, "loss_module": loss_path,
                  "loss_call": site}))
    return out


CHECK = Check("double-softmax", "warning",
              "softmax/sigmoid output fed to a loss that applies it itself", run)
