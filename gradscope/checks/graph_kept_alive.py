"""graph-kept-alive: a variable of the training loop keeps autograd graphs alive across steps.

- ``total_loss += loss`` (or an EMA of the loss, ``losses.append(loss)``): every step's graph
  stays chained to the variable; memory grows with every step.
- evaluation without ``torch.no_grad()`` accumulating ``val_loss += loss``: every batch's graph
  *and its saved activations* stay in memory.
- an RNN's hidden state carried into the next batch without ``.detach()``: the next backward
  runs into the previous batch's graph, which its backward freed ("Trying to backward through
  the graph a second time"), or, with the usual "fix" ``retain_graph=True``, into weights the
  optimizer has changed since (torch's in-place error).

Quiet on the correct code that looks like it: ``total += loss.item()``, truncated BPTT with
``h = h.detach()``, a GAN's ``fake`` fed to the discriminator, losses summed over micro-batches
before one backward.
"""
from __future__ import annotations

from typing import Optional

from ..findings import Finding
from ._common import plural
from .registry import Check

RETAIN_NOTE = ("retain_graph=True is not the fix: it keeps every earlier batch's graph alive, "
               "backward then runs through all of them, and optimizer.step() changing the "
               "weights they saved makes it fail anyway.")
STATE_HINT = ("Detach the carried state between batches (truncated backpropagation through "
              "time): state = tuple(s.detach() for s in state), or h = h.detach(), before the "
              "next forward. " + RETAIN_NOTE)


def _state_hint(c: dict) -> str:
    if c.get("kind") != "attribute":
        return STATE_HINT
    attr = c["name"].rsplit(".", 1)[-1]
    return (f"Detach the state kept on the module before it is used again: self.{attr} = "
            f"tuple(h.detach() for h in self.{attr}) (or self.{attr} = self.{attr}.detach() "
            "for one tensor) at the start of forward, truncated backpropagation through time. "
            + RETAIN_NOTE)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _carried_into(trace, backward_index: int) -> Optional[dict]:
    """The input carried with old history into the forward that fed backward ``index``, or
    a module attribute holding history across backward calls (``self.hidden`` kept on the
    model, the state never detached), as the same kind of record."""
    hits = [r for r in trace.kept_graphs if r.get("kind") == "carried"
            and backward_index - 1 in (r.get("backwards") or ())]
    if hits:
        return max(hits, key=lambda r: (r.get("made_by") == r.get("model"), r.get("count", 0)))
    held = [a for a in trace.attributes if a.get("backwards_crossed", 0) > 0
            and a.get("kind") in ("tensor", "buffer", "container")]
    if not held:
        return None
    a = max(held, key=lambda a: a.get("history", 0))
    path = f"{a['model']}.{a['module'] + '.' if a['module'] else ''}{a['attr']}"
    return {"kind": "attribute", "model": a["model"], "name": path, "made_by": a["model"],
            "location": a.get("location"), "arg": None}


def _last_backward(trace) -> tuple:
    found = [e for e in trace.events if e.get("kind") == "backward"]
    return (found[-1]["index"], found[-1].get("location")) if found else (0, None)


def _name(rec: dict) -> str:
    return f"`{rec['name']}`" if rec.get("name") else f"argument {rec.get('arg', 0) + 1}"


def _freed(trace, failure: dict) -> Optional[Finding]:
    index, where = _last_backward(trace)
    where = where or failure.get("location")
    c = _carried_into(trace, index)
    if c is None and any(d.get("method") == "forward" and d.get("hooks")
                         for d in trace.direct_calls):
        return None  # a hook-made weight left stale: forward-called-directly explains it
    if c is None:
        return Finding(
            "graph-kept-alive", "error",
            f"backward() at {where} went into a graph that an earlier backward() freed "
            "(torch's 'Trying to backward through the graph a second time'): a tensor built "
            "before that call, an output or a loss kept from an earlier step, is part of this "
            "loss.", hint="Recompute what the loss needs in every step, or .detach() values "
                          "kept from earlier steps. " + RETAIN_NOTE,
            location=where, data={"explains_failure": True})
    name = _name(c)
    if c.get("made_by") in (None, c["model"]):
        passed = (f"kept on the model (assigned at {c['location']})" if c.get("kind") ==
                  "attribute" else f"passed to {c['model']}'s forward at {c['location']}")
        message = (f"backward() at {where} failed (torch's 'Trying to backward through the "
                   f"graph a second time'): {name}, {passed}, still carries the autograd "
                   "history of the previous batch, and the previous backward() freed that "
                   "graph. A recurrent state carried across batches must be detached.")
        hint = _state_hint(c)
    else:
        message = (f"backward() at {where} failed (torch's 'Trying to backward through the "
                   f"graph a second time'): {name} was made by {c['made_by']} before the "
                   f"previous backward() freed its graph, then fed to {c['model']}'s forward at "
                   f"{c['location']}, so this backward needs the freed graph again.")
        hint = (f"If {c['model']}'s loss should not train {c['made_by']} through it, pass "
                f"{name.strip('`')}.detach(); if it should (a GAN's generator loss), compute "
                "it again after the step, or keep the first graph on purpose with "
                "retain_graph=True on the first backward.")
    return Finding("graph-kept-alive", "error", message, hint=hint, module=c["model"],
                   location=c["location"], data={"explains_failure": True, "carried": c})


def retained_state(trace) -> Optional[dict]:
    """An in-place failure caused by a state carried with its history and kept alive by
    ``retain_graph=True``: the carried record, or None."""
    if (trace.failure or {}).get("kind") != "inplace-modified":
        return None
    retained = [e for e in trace.events if e.get("kind") == "backward" and e.get("retain_graph")]
    if not retained:
        return None
    c = _carried_into(trace, _last_backward(trace)[0])
    return {**c, "retain_location": retained[0].get("location")} if c else None


def _retained(trace, c: dict) -> Finding:
    index, where = _last_backward(trace)
    steps = [e for e in trace.events if e.get("kind") == "step"]
    step = f" by {steps[-1]['optimizer']}.step() at {steps[-1]['location']}" if steps else ""
    return Finding(
        "graph-kept-alive", "error",
        f"backward() at {where} failed with torch's in-place error because {_name(c)} was "
        f"carried {'on the model' if c.get('kind') == 'attribute' else 'into ' + c['model'] + chr(39) + 's forward'}"
        f" ({c['location']}) with the previous batch's "
        f"history, kept alive by retain_graph=True at {c['retain_location']}: this backward "
        f"ran back into the previous batch, whose saved weights were changed in place since"
        f"{step}.", hint=_state_hint(c), module=c["model"], location=c["location"],
        data={"explains_failure": True, "carried": c})


def _growth(rec: dict) -> dict:
    """Nodes and saved bytes added per step (per backward call, or per forward without any)."""
    first, last = rec["measures"][0], rec["measures"][-1]
    for key, unit in (("optimizer_steps", "step"), ("backward_calls", "backward call"),
                      ("forwards", "forward")):
        span = last[key] - first[key]
        if span > 0:
            break
    else:
        span, unit = 0, "step"
    return {"unit": unit, "span": span, "first": first, "last": last,
            "nodes": (last["nodes"] - first["nodes"]) / span if span else 0.0,
            "bytes": (last["saved_bytes"] - first["saved_bytes"]) / span if span else 0.0}


def _evaluation(rec: dict) -> bool:
    """Grown over forwards in eval mode with gradients on, no backward in between, and holding
    saved activations: a validation loop without torch.no_grad()."""
    m = rec["measures"]
    return len(m) == 2 and all(x.get("eval") for x in m) \
        and m[0]["backward_calls"] == m[1]["backward_calls"] \
        and m[1]["saved_bytes"] > m[0]["saved_bytes"]


def _growing(trace, explained: set) -> list:
    out = []
    model = next((m["label"] for m in trace.models if m.get("parameters")), None)
    carried_names = {r.get("name") for r in trace.kept_graphs if r.get("kind") == "carried"}
    no_backward = trace.backward_calls == 0
    for rec in trace.kept_graphs:
        if rec.get("kind") not in ("chain", "list") or not rec.get("measures"):
            continue
        # carried across an optimizer step (across a backward in runs without steps); a sum
        # over one step's micro-batches, reset at the next step, is not
        crossed = rec.get("crossed_steps") if trace.optimizer_steps else \
            rec.get("crossed_backwards")
        evaluating = _evaluation(rec)
        if not (crossed or evaluating or (no_backward and rec.get("looks", 0) >= 3)):
            continue
        if rec["name"] in explained:
            continue  # the failure's finding is about this variable already
        g = _growth(rec)
        if g["span"] <= 0 or (g["nodes"] <= 0 and g["bytes"] <= 0):
            continue  # not seen growing
        var = f"`{rec['name']}`"
        scope = "a global" if rec["scope"] == "global" else f"a local of {rec['function']}()"
        site = f" (`{rec['source']}` at {rec['location']})" if rec.get("source") else \
            f" (at {rec['location']})"
        grew = (f"{g['first']['nodes']:,} to {g['last']['nodes']:,}"
                f"{'+' if g['last'].get('capped') else ''} autograd nodes over "
                f"{plural(g['span'], g['unit'])}")
        per = f"{g['nodes']:.0f} nodes per {g['unit']}"
        if g["bytes"] > 0:
            per += f", {_human(g['bytes'])} of saved activations per {g['unit']}"
        if no_backward or evaluating:
            text = (f"{var}, {scope}{site}, accumulates the autograd history of every forward, "
                    f"and no backward() consumes it: each batch's graph and the activations "
                    f"it saved stay in memory ({grew}: {per}).")
            hint = ("Evaluate under torch.no_grad() (or torch.inference_mode()), and "
                    f"accumulate plain numbers: {rec['name']} += loss.item().")
        elif rec["kind"] == "list":
            text = (f"{var}, {scope}{site}, holds {rec.get('items', 0)} tensors with autograd "
                    f"history, one per step: each keeps its step's graph alive ({grew}: {per}),"
                    " so memory grows with every step.")
            hint = (f"Store numbers or detached tensors: {rec['name']}.append(loss.item()) "
                    "(or loss.detach()).")
        else:
            text = (f"{var}, {scope}{site}, chains every step's autograd graph onto the last "
                    f"({grew}: {per}): the graphs stay alive as long as {var} does, so memory "
                    "grows with every step, and a backward through it would run through all "
                    "of them.")
            hint = STATE_HINT if rec["name"] in carried_names else (
                f"Accumulate a plain number: {rec['name']} += loss.item() (or loss.detach() "
                "to keep a tensor)." if "+=" in (rec.get("source") or "") else
                f"Build {rec['name']} from plain numbers (loss.item()) or detached tensors "
                "(loss.detach()).")
        out.append(Finding("graph-kept-alive", "warning", text, hint=hint, module=model,
                           location=rec["location"],
                           data={"variable": rec["name"], "kind": rec["kind"],
                                 "nodes_per_step": round(g["nodes"], 1),
                                 "bytes_per_step": round(g["bytes"]), "unit": g["unit"]}))
    return out


def run(trace) -> list:
    out = []
    kind = (trace.failure or {}).get("kind")
    if kind == "graph-freed":
        found = _freed(trace, trace.failure)
        out.extend([found] if found is not None else [])
    elif kind == "inplace-modified":
        c = retained_state(trace)
        if c is not None:
            out.append(_retained(trace, c))
    explained = {f.data.get("carried", {}).get("name") for f in out}
    out.extend(_growing(trace, explained))
    return out


CHECK = Check("graph-kept-alive", "error",
              "a variable keeps autograd graphs alive across steps (total_loss += loss, an RNN "
              "state not detached)", run)
