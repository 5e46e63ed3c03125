"""dead-training: optimizer steps where no trainable parameter received a gradient at all.

The run trains nothing, and nothing says so: ``loss.backward()`` runs, ``optimizer.step()``
runs, the loss just does not move. The causes users post, each named with its line:

- the training forward ran under ``torch.no_grad()`` / ``torch.inference_mode()``;
- the loss was built from values that left autograd (``argmax``, ``.item()``, ``.tolist()``,
  ``.numpy()``, ``torch.tensor(...)`` of the model's output);
- ``loss.requires_grad = True`` / ``loss.requires_grad_()`` added to silence "element 0 of
  tensors does not require grad", which makes backward run on a leaf;
- no ``backward()`` before the step, or a loss that does not involve this optimizer's
  parameters at all.

The same causes explain torch's "element 0 of tensors does not require grad" error when the
program was not patched that way (the finding then explains the failure).
"""
from __future__ import annotations

from typing import Optional

from ..findings import Finding
from ._common import plural
from ._history import at_backward, backward_before_steps, cut_phrase, optimizer_model, window
from .registry import Check

HINT_NO_GRAD = ("Run the training forward with gradients on: keep torch.no_grad() / "
                "inference_mode() for evaluation only.")
HINT_CUT = ("Build the loss from the model's output tensor itself (e.g. "
            "F.cross_entropy(logits, target)): argmax has no gradient, and .item(), .tolist(), "
            ".numpy() or torch.tensor(...) copy values without their history.")
HINT_SWITCH = " Remove the requires_grad = True on the loss: it hides the error, not the cause."
HINT_NO_BACKWARD = "Call loss.backward() before every optimizer.step()."
HINT_OTHER = ("Compute the loss with the model whose parameters this optimizer holds (build the "
              "optimizer after the final model, and do not re-create the model in the loop).")


def _cause(trace, backward_index: Optional[int]) -> dict:
    """Why the backward call ``backward_index`` reached no parameter: sentences, the line to
    point at, the module, the fix."""
    if backward_index is None:
        return {"text": "No backward() call ran since the previous step, so the step applied "
                        "gradients that were never computed.", "hint": HINT_NO_BACKWARD}
    events = window(trace, backward_index)
    backward = events[-1] if events and events[-1].get("kind") == "backward" else {}
    parts, location, module, hint = [], None, None, ""
    weighted = {m["label"] for m in trace.models if m.get("parameters")}
    no_grad = [e for e in events if e.get("kind") == "forward" and not e.get("grad")
               and e.get("model") in weighted]  # the model's forward, not the loss module's
    if no_grad:
        f = no_grad[-1]
        mode = "torch.inference_mode()" if f.get("inference") else "torch.no_grad()"
        parts.append(f"{f['model']}'s forward at {f['location']} ran under {mode}, so its "
                     "output has no autograd history")
        location, module, hint = f.get("location"), f.get("model"), HINT_NO_GRAD
    switches = at_backward(trace.grad_switches, backward_index)
    switch = max(switches, key=lambda s: s.get("order", 0)) if switches else None
    if not no_grad:
        limit = switch.get("order", 0) if switch else float("inf")
        cuts = [c for c in at_backward(trace.cuts, backward_index)
                if c.get("order", 0) < limit and c.get("upstream_parameters")
                and not c.get("flat")]
        if cuts:
            cut = max(cuts, key=lambda c: c.get("order", 0))  # the one nearest the loss
            parts.append(f"the loss was built from {cut_phrase(cut)}, which leaves autograd")
            location, hint = cut.get("location"), HINT_CUT
    if switch is not None:
        parts.append(f"`{switch['op']}` at {switch['location']} then let backward() run on a "
                     "tensor with no history, which reaches no parameter")
        location = location or switch.get("location")
        hint = (hint or HINT_CUT) + HINT_SWITCH
    elif backward.get("leaf_root"):
        parts.append("backward() ran on a tensor with no history: its requires_grad was switched "
                     "on after the graph was lost")
        if not trace.cuts and not no_grad:
            parts.append("re-run with 'gradscope trace' to name the line that cut it")
        hint = hint or (HINT_CUT + HINT_SWITCH)
    if not parts:
        parts.append(f"backward() at {backward.get('location')} started from a loss that does "
                     "not depend on any parameter this optimizer updates")
        location, hint = backward.get("location"), HINT_OTHER
    return {"text": "Cause: " + "; ".join(parts) + ".", "location": location,
            "module": module, "hint": hint}


def dead_step(s: dict) -> bool:
    """A step that updated nothing: trainable parameters, none with a gradient."""
    return bool(s.get("trainable")) and not s.get("received") and not s.get("assigned") \
        and not s.get("cleared") and not s.get("skipped_by_scaler")


def _live_backwards(trace, before: dict) -> set:
    """Backward calls whose gradients some optimizer step used."""
    return {before.get(s["step"]) for s in trace.accumulation
            if s.get("received") or s.get("assigned")}


def _dead_steps(trace) -> list:
    by_optimizer: dict = {}
    for s in trace.accumulation:
        if "trainable" in s and not s.get("truncated"):
            by_optimizer.setdefault(s.get("optimizer_id"), []).append(s)
    before = backward_before_steps(trace)
    live = _live_backwards(trace, before)
    out = []
    for serial, steps in by_optimizer.items():
        dead = [s for s in steps if dead_step(s)]
        everything = len(dead) == len(steps)
        if not everything:
            # One optimizer per head or task, all stepped while one loss trained: another
            # optimizer used that backward, so these steps are idle by design.
            dead = [s for s in dead if before.get(s["step"]) not in live]
        if not dead or (not everything and (len(dead) < 2 or 4 * len(dead) < len(steps))):
            continue  # a lone early step before training, say
        out.append(_dead_finding(trace, serial, steps, dead, everything, before))
    return out


def _dead_finding(trace, serial, steps: list, dead: list, everything: bool,
                  before: dict) -> Finding:
    first = dead[0]
    backward = before.get(first["step"])
    cause = _cause(trace, backward)
    model = cause.get("module") or optimizer_model(trace)
    how_many = (f"all {plural(len(steps), 'step')}" if everything
                else f"{len(dead)} of {len(steps)} steps")
    skipped = backward is None and not everything  # steps on batches the loop skipped
    message = (f"{first['optimizer']}.step() at {first['location']} updated nothing in "
               f"{how_many}: none of the {first['trainable']} trainable parameters it steps "
               f"received a gradient{' in ' + model if model else ''}, so "
               f"{'the model does not learn' if everything else 'those steps are lost'}. "
               + (cause["text"] if not skipped else
                  "No backward() ran before them: batches skipped (a training_step returning "
                  "None, say) while the optimizer still stepped."))
    return Finding(
        "dead-training", "error" if everything else "info" if skipped else "warning", message,
        hint=cause["hint"] if not skipped else "Nothing to fix if the batches were skipped on "
                                                "purpose; otherwise compute their loss.",
        module=model, location=cause.get("location") or first["location"],
        data={"optimizer_id": serial, "dead_steps": [s["step"] for s in dead][:100],
              "steps": len(steps), "cause_location": cause.get("location")})


def _failed(trace, failure: dict) -> Finding:
    backwards = [e["index"] for e in trace.events if e.get("kind") == "backward"]
    cause = _cause(trace, backwards[-1] if backwards else None)
    if not backwards:
        cause = {"text": "", "hint": HINT_CUT}
    where = failure.get("location")
    return Finding(
        "dead-training", "error",
        f"backward() at {where} failed with torch's 'element 0 of tensors does not require "
        f"grad and does not have a grad_fn': the loss has no autograd history, so no "
        f"parameter could get a gradient. {cause['text']}".rstrip(),
        hint=cause["hint"] or HINT_CUT, module=cause.get("module"),
        location=cause.get("location") or where,
        data={"explains_failure": True, "cause_location": cause.get("location")})


def _flat_cause(trace) -> tuple:
    """(sentence, line) for gradients that are all exactly zero: an op with a zero derivative
    on the way to the loss (round, sign, a comparison), or a softmax over a dimension of
    size 1 (always 1)."""
    flats = [c for c in trace.cuts if c.get("flat") and c.get("upstream_parameters")]
    if flats:
        c = max(flats, key=lambda c: c.get("order", 0))
        return f"the loss goes through {cut_phrase(c)}", c.get("location")
    for n in trace.graph.nodes:
        dim = (trace.node_args.get(n.id) or {}).get("dim")
        if dim is not None and n.shape and -len(n.shape) <= dim < len(n.shape) \
                and n.shape[dim] == 1:
            sites = [c["location"] for c in trace.softmax_calls if c.get("location")]
            where = f" at {sites[0]}" if len(sites) == 1 else ""
            return (f"a {n.op.replace('Backward0', '').lower()} over dim {dim}{where}, of "
                    f"size 1 in its {'x'.join(map(str, n.shape))} input, is constant 1"), \
                (sites[0] if len(sites) == 1 else None)
    return "", None


def _zero_gradients(trace) -> list:
    """Steps that received gradients, all exactly zero in every step recorded."""
    norms = trace.gradients.get("grad_norms") or {}
    values = [v for series in norms.values() for v in series if v is not None]
    steps = [s for s in trace.accumulation if s.get("received")]
    if len(steps) < 2 or not values or any(v != 0.0 for v in values):
        return []
    cause, location = _flat_cause(trace)
    first = steps[0]
    model = optimizer_model(trace)
    return [Finding(
        "dead-training", "error",
        f"{first['optimizer']}.step() at {first['location']} received gradients for "
        f"{first['received']} parameter(s){' of ' + model if model else ''}, but every one "
        f"of them was exactly 0 in all {len(steps)} steps recorded, so nothing changes."
        + (f" Cause: {cause}." if cause else " The loss is flat in the parameters: an op "
           "with a zero derivative (round, sign, a comparison) sits between them and the "
           "loss."),
        hint="Train on a differentiable surrogate: the raw logits or probabilities "
             "(F.cross_entropy(logits, y), torch.sigmoid(out)) instead of rounded or "
             "thresholded values, and softmax over a dimension with more than one entry.",
        module=model, location=location or first["location"],
        data={"zero_gradients": True, "steps": len(steps), "cause_location": location})]


def run(trace) -> list:
    out = []
    if (trace.failure or {}).get("kind") == "no-grad-loss":
        out.append(_failed(trace, trace.failure))
    out.extend(_dead_steps(trace) or _zero_gradients(trace))
    return out


CHECK = Check("dead-training", "error",
              "optimizer steps where no trainable parameter received a gradient (no_grad "
              "forward, a loss from argmax/.item())", run)
