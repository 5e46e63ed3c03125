"""inplace-modified: backward failed because a tensor saved for it was changed in place.

Names the autograd node that needed the tensor, the in-place operation that changed it and its
``file:line`` (from the in-place ops ``gradscope trace`` records), or the optimizer step that
updated saved weights before a second backward.
"""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list, shape_str
from .graph_kept_alive import retained_state
from .registry import Check

HINT = ("Use the out-of-place form (e = e / e.sum(...) instead of e /= ..., torch.relu(x) "
        "instead of x.relu_(), inplace=False), or clone first (x = x.clone()) when you must "
        "modify a tensor that an earlier op used.")
STEP_HINT = ("Call backward() for every loss that uses these weights before optimizer.step() "
             "(add the losses, or backward each first), or run the forward again after the step; "
             "in a GAN, detach the generator's output for the discriminator update.")


def _nodes(trace, op: str, model, module) -> list:
    hits = [n.id for n in trace.graph.nodes if n.op == op and n.model == model
            and n.module == module]
    return hits if len(hits) == 1 else []


def run(trace) -> list:
    failure = trace.failure or {}
    if failure.get("kind") != "inplace-modified" or retained_state(trace) is not None:
        return []  # (a state carried with retain_graph=True: graph-kept-alive explains it)
    detail = failure.get("detail") or {}
    stale = (failure.get("stale") or [None])[0]
    culprit = failure.get("inplace_op")
    params = failure.get("parameters") or []
    step = failure.get("last_step")
    where = failure.get("backward_location") or failure.get("location")
    tensor = f"a {shape_str(detail.get('shape'))} tensor" if detail else "a tensor"
    if detail.get("producer"):
        tensor += f" made by {detail['producer']}"
    if stale:
        need = (f"{stale['op']} in {module_path(stale['model'], stale['module']) or 'code outside the models'}"
                f" saved {tensor} (its '{stale['saved']}') for backward")
    else:
        need = f"An autograd node saved {tensor} for backward"
    nodes = _nodes(trace, stale["op"], stale["model"], stale["module"]) if stale else []
    if culprit:
        in_module = module_path(culprit.get("model"), culprit.get("module"))
        message = (f"backward() failed at {where}: {need}, and {culprit['op']} at "
                   f"{culprit.get('location')}{' in ' + in_module if in_module else ''} changed "
                   "it in place afterwards, so autograd cannot compute the gradient (torch's "
                   "'modified by an inplace operation' error).")
        return [Finding("inplace-modified", "error", message, hint=HINT, module=in_module,
                        location=culprit.get("location"), nodes=nodes,
                        data={"node": stale, "inplace_op": culprit, "detail": detail})]
    if params and step:
        several = len(params) > 1
        message = (f"backward() failed at {where}: {need}; the weight{'s' if several else ''} "
                   f"{names_list(params)} {'were' if several else 'was'} updated in place by "
                   f"{step.get('optimizer')}.step() "
                   f"at {step.get('location')} after the forward that saved them and before this "
                   "backward.")
        return [Finding("inplace-modified", "error", message, hint=STEP_HINT,
                        location=step.get("location"), nodes=nodes,
                        data={"node": stale, "parameters": params, "step": step,
                              "detail": detail})]
    unknown = ("re-run it with 'gradscope trace' (which records in-place ops) to name the op "
               "and its line" if not failure.get("ops_watched")
               else "the in-place op ran where gradscope could not see it (under a compiled "
                    "region, or before tracing started)")
    message = (f"backward() failed at {where}: {need}, but it was changed in place before "
               f"backward ran; {unknown}.")
    return [Finding("inplace-modified", "error", message, hint=HINT, location=where,
                    nodes=nodes, data={"node": stale, "parameters": params, "detail": detail})]


CHECK = Check("inplace-modified", "error",
              "backward failed: a tensor it needed was modified in place", run)
