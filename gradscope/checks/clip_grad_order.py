"""clip-grad-order: gradient clipping that cannot affect the update it is meant for.

``clip_grad_norm_`` / ``clip_grad_value_`` must run between ``loss.backward()`` and
``optimizer.step()``. After the step the update has already used the unclipped gradients (and
the next ``zero_grad()`` throws the clipped ones away); right after ``zero_grad()``, before
backward, it clips gradients that are about to be replaced. Either way training runs unclipped,
which is the instability the clipping was added for. With ``GradScaler``, clipping between
backward and step without ``scaler.unscale_(optimizer)`` first clips the *scaled* gradients:
``max_norm`` then bounds the scaled norm, and once the scaler divides by its scale (65536 at
the start by default) every update is cut to ``max_norm / scale``, so the model barely learns.
Clipping between backward and step (with ``GradScaler``: after ``scaler.unscale_(optimizer)``),
once per step or once per micro-batch, is silent, and so is
``clip_grad_norm_(params, float("inf"))`` anywhere: it only measures the norm, for the logs.
"""
from __future__ import annotations

from ..findings import Finding
from ._history import optimizer_model
from .registry import Check

HINT = ("Clip between backward and step: loss.backward(); "
        "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm); optimizer.step() "
        "(with GradScaler: scaler.unscale_(optimizer) before clipping).")


def _backward_before_step(events: list, start: int, owners: list) -> bool:
    """Does a backward come after ``events[start]`` before the next step of its optimizer?"""
    for e in events[start + 1:]:
        if e.get("kind") == "backward":
            return True
        if e.get("kind") == "step" and (not owners or e.get("optimizer_id") in owners):
            return False
    return False


def _bad_clips(trace) -> list:
    """(clip event, "after-step" | "before-backward", the event before it) for each clip that
    cannot act on the gradients of the next step. Before backward means: right after
    zero_grad(), and the backward that makes the step's gradients comes after it (a GAN's
    generator clipped after the discriminator's zero_grad, then stepped, is fine)."""
    last = None  # the last backward / step / zero_grad event
    bad = []
    events = trace.events
    for k, e in enumerate(events):
        kind = e.get("kind")
        if kind in ("backward", "zero_grad", "step"):
            last = e
        elif kind == "clip" and not e.get("measure_only"):
            owners = e.get("optimizer_ids") or []
            if last is not None and last.get("kind") == "step" and (
                    not owners or last.get("optimizer_id") in owners):
                bad.append((e, "after-step", last))
            elif (last is None or last.get("kind") == "zero_grad") \
                    and _backward_before_step(events, k, owners):
                bad.append((e, "before-backward", last))
            elif e.get("scaled"):
                bad.append((e, "scaled", last))
    return bad


def run(trace) -> list:
    bad = _bad_clips(trace)
    if not bad:
        return []
    clips = sum(1 for e in trace.events if e.get("kind") == "clip" and not e.get("measure_only"))
    e, why, before = bad[0]
    fn = e.get("fn", "clip_grad_norm_")
    if why == "scaled":
        scale = e.get("scaled")
        message = (f"{fn} at {e.get('location')} clips gradients that GradScaler still holds "
                   f"multiplied by its loss scale ({scale:g} at the start): scaler.unscale_"
                   "(optimizer) was not called before it, so the limit applies to the scaled "
                   "gradients, and after the scaler divides by the scale every update is cut to "
                   "about limit / scale")
        return [Finding(
            "clip-grad-order", "warning",
            f"{message} ({len(bad)} of {clips} clipping calls). The model barely learns, and "
            "nothing fails.",
            hint="Unscale first: scaler.scale(loss).backward(); scaler.unscale_(optimizer); "
                 "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm); "
                 "scaler.step(optimizer); scaler.update().",
            module=optimizer_model(trace), location=e.get("location"),
            data={"calls": clips, "misplaced": len(bad), "why": why, "scale": scale})]
    if why == "after-step":
        message = (f"{fn} at {e.get('location')} runs after {before.get('optimizer')}.step() at "
                   f"{before.get('location')}: the update already used the unclipped "
                   "gradients, and the next zero_grad() discards the clipped ones, so the "
                   "clipping never takes effect")
    else:
        after = f" right after zero_grad() at {before.get('location')}" if before else ""
        message = (f"{fn} at {e.get('location')} runs before loss.backward(){after}: it clips "
                   "gradients that backward is about to replace, so the step uses unclipped "
                   "gradients")
    return [Finding(
        "clip-grad-order", "warning",
        f"{message} ({len(bad)} of {clips} clipping calls). Training runs unclipped, exposed "
        "to the gradient spikes the clipping was meant to stop.",
        hint=HINT, module=optimizer_model(trace), location=e.get("location"),
        data={"calls": clips, "misplaced": len(bad), "why": why})]


CHECK = Check("clip-grad-order", "warning",
              "clip_grad_norm_/clip_grad_value_ after optimizer.step(), before backward(), "
              "or on GradScaler's scaled gradients (no unscale_): clipping misfires", run)
