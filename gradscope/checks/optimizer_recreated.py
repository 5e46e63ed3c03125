"""optimizer-recreated: a new optimizer over the same parameters every iteration.

``opt = torch.optim.Adam(model.parameters())`` inside the loop trains, but every optimizer
starts with empty state: Adam's moment estimates (and SGD's momentum) restart from zero at each
step, so each update is a bias-corrected first step (about ``lr * sign(grad)``) and momentum
never builds up. Stateless optimizers (SGD without momentum or weight decay state) are
unaffected and stay silent, as does a new optimizer per training stage (each one stepping
more than once), and one built after each ``load_state_dict`` (test-time adaptation: the
weights are reset with the optimizer, episode by episode).
"""
from __future__ import annotations

from ..findings import Finding
from ._history import optimizer_model
from .registry import Check

HINT = ("Create the optimizer once, before the training loop, and reuse it; to change the "
        "learning rate use a scheduler or set param_group['lr'].")


def _restored_before(trace, members: list) -> int:
    """How many of ``members`` were built right after weights were loaded (since the one
    before them was built)."""
    wanted = {r["id"] for r in members}
    loaded, count = False, 0
    for e in trace.events:
        if e.get("kind") == "load_state_dict":
            loaded = True
        elif e.get("kind") == "optimizer_created" and e.get("optimizer_id") in wanted:
            count += loaded
            loaded = False
    return count


def run(trace) -> list:
    groups: dict = {}
    for rec in trace.optimizers:
        if rec.get("params"):
            groups.setdefault(rec.get("same_as", rec["id"]), []).append(rec)
    out = []
    for members in groups.values():
        steps = sorted(r.get("steps", 0) for r in members)
        if len(members) < 3 or steps[len(steps) // 2] > 1 or not any(r.get("stateful")
                                                                     for r in members):
            continue
        if 2 * _restored_before(trace, members) >= len(members):
            continue  # weights reset with each optimizer: episodes, on purpose
        first = members[0]
        where = first.get("location") or "an unknown line"
        out.append(Finding(
            "optimizer-recreated", "warning",
            f"{first['type']} was constructed {len(members)} times at {where} over the same "
            f"{first['params']} parameters, each one stepping {steps[len(steps) // 2]} "
            f"time(s): a new optimizer starts with empty state, so {first['type']}'s running "
            "averages (moments, momentum) restart from zero at every step and the updates are "
            "not the ones the optimizer is meant to make.",
            hint=HINT, module=optimizer_model(trace), location=first.get("location"),
            data={"optimizers": len(members), "type": first["type"],
                  "steps_each": steps[len(steps) // 2]}))
    return out


CHECK = Check("optimizer-recreated", "warning",
              "an optimizer built anew every iteration: Adam/momentum state reset at each step",
              run)
