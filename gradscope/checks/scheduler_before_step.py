"""scheduler-before-step: ``lr_scheduler.step()`` before the optimizer's first ``step()``.

Since PyTorch 1.1 the scheduler must step after the optimizer; called before, the schedule
skips its first value (torch only warns, once, in the log). A first optimizer step that
``GradScaler`` skipped (Inf/NaN gradients in the first fp16 steps) is not this mistake, nor is
``ReduceLROnPlateau.step(val_loss)`` after a baseline validation (it only reacts to the metric):
both stay silent.
"""
from __future__ import annotations

from ..findings import Finding
from ._history import optimizer_model
from .registry import Check

HINT = ("Step the scheduler after the optimizer: optimizer.step(); scheduler.step() (once per "
        "iteration or once per epoch, as the schedule is defined).")


def run(trace) -> list:
    stepped: set = set()     # optimizer ids that have stepped
    skipped: set = set()     # ... whose step GradScaler skipped
    out = []
    reported: set = set()
    for e in trace.events:
        kind, serial = e.get("kind"), e.get("optimizer_id")
        if kind == "step":
            stepped.add(serial)
        elif kind == "scaler_skip":
            skipped.add(serial)
        elif kind == "scheduler_step" and serial is not None and serial not in stepped \
                and serial not in skipped and serial not in reported \
                and e.get("scheduler") != "ReduceLROnPlateau":
            reported.add(serial)
            first = next((s for s in trace.events if s.get("kind") == "step"
                          and s.get("optimizer_id") == serial), None)
            opt = f"{first['optimizer']}.step() (first at {first['location']})" if first else \
                "the optimizer's step()"
            changed = e.get("lr") is not None and e.get("lr_after") is not None \
                and e["lr"] != e["lr_after"]
            lr = (f": the initial learning rate {e['lr']:g} was never used (the first update "
                  f"used {e['lr_after']:g})") if changed else ""
            out.append(Finding(
                "scheduler-before-step", "warning",
                f"{e.get('scheduler')}.step() at {e.get('location')} ran before {opt}, so the "
                f"schedule moved on before the first update{lr}, and every update uses the "
                "learning rate meant for the one after it (torch warns once: 'Detected call of "
                "lr_scheduler.step() before optimizer.step()').",
                hint=HINT, module=optimizer_model(trace), location=e.get("location"),
                data={"scheduler": e.get("scheduler"), "optimizer_id": serial,
                      "initial_lr": e.get("lr")}))
    return out


CHECK = Check("scheduler-before-step", "warning",
              "lr_scheduler.step() called before the first optimizer.step(): the schedule "
              "skips its first value", run)
