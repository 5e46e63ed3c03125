"""Step-order events that torch has no hook for: gradient clipping, learning-rate scheduler
steps, optimizer construction and the steps ``GradScaler`` skips.

One set of wrappers is shared by every open capture (installed with the first, removed with
the last, like the backward patches in ``capture``). Each wrapper calls the original unchanged
and tells the open captures what happened; a capture records plain data only.

- ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` (and the deprecated
  ``clip_grad_norm``): where clipping ran relative to backward and ``optimizer.step()``.
  Code that did ``from torch.nn.utils import clip_grad_norm_`` *before* the capture opened
  holds the original function and is not seen (scripts run by ``gradscope trace`` import after).
- ``LRScheduler.step`` (and ``ReduceLROnPlateau.step``): the scheduler's own first call from
  its constructor is not the user's and is skipped, as are the calls a ``SequentialLR`` or
  ``ChainedScheduler`` makes to the schedulers inside it.
- ``Optimizer.__init__``: where each optimizer was built (an optimizer built every iteration).
- ``GradScaler.step``: an optimizer step it skipped (Inf/NaN gradients) never reaches the
  optimizer, so a scheduler stepping right after it is not the user's ordering mistake.
"""
from __future__ import annotations

import functools
import threading
import types
from typing import Any, Callable, Optional

import torch

from .handles import pass_through
from .optimizers import unwrap_optimizer

_CLIP_NAMES = ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm")


def _clip_modules() -> list:
    import torch.nn.utils as utils
    import torch.nn.utils.clip_grad as clip_grad
    return [utils, clip_grad]


def _scheduler_classes() -> list:
    from torch.optim import lr_scheduler
    classes = [getattr(lr_scheduler, "LRScheduler", None) or lr_scheduler._LRScheduler]
    plateau = getattr(lr_scheduler, "ReduceLROnPlateau", None)
    if plateau is not None and "step" in vars(plateau):
        classes.append(plateau)
    return classes


def _scaler_classes() -> list:
    classes = []
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        classes.append(amp.GradScaler)
    legacy = getattr(torch.cuda.amp, "GradScaler", None)
    if legacy is not None and "step" in vars(legacy) and legacy not in classes:
        classes.append(legacy)
    return classes


class StepOrderPatches:
    """The shared wrappers. ``add(capture)`` / ``remove(capture)``; a capture receives
    ``_on_clip(name, params)``, ``_on_scheduler_step(scheduler)``,
    ``_on_optimizer_created(optimizer)`` and ``_on_scaler_skip(optimizer)``."""

    def __init__(self) -> None:
        self.captures: list = []
        self.lock = threading.Lock()
        self.local = threading.local()
        self.undo: list = []  # (owner, attribute, original, wrapper)
        self.relocator: Optional[Any] = None

    def add(self, capture: Any) -> None:
        with self.lock:
            if not self.captures:
                self._install()
            self.captures.append(capture)

    def remove(self, capture: Any) -> None:
        with self.lock:
            if capture in self.captures:
                self.captures.remove(capture)
            if not self.captures:
                self._uninstall()

    def _open(self) -> list:
        return [c for c in list(self.captures) if c.state == "open"]

    def _tell(self, what: str, method: str, *args: Any) -> None:
        for cap in self._open():
            cap._guard(what, lambda c=cap: getattr(c, method)(*args))

    # -- install -------------------------------------------------------------------------------
    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name,
                                                                                    None)
        if original is None:
            return
        wrapper = make(original)
        setattr(owner, name, wrapper)
        self.undo.append((owner, name, original, wrapper))

    def _install(self) -> None:
        for module in _clip_modules():
            for name in _CLIP_NAMES:
                if hasattr(module, name):
                    self._patch(module, name, lambda f, n=name: self._clip_wrapper(f, n))
        for cls in _scheduler_classes():
            self._patch(cls, "step", self._scheduler_wrapper)
        self._patch(torch.optim.Optimizer, "__init__", self._init_wrapper)
        for cls in _scaler_classes():
            self._patch(cls, "step", self._scaler_wrapper)
        # torch's own warnings from these calls ("Detected call of `lr_scheduler.step()`
        # before `optimizer.step()`") name their caller's line: the user's, not ours.
        from .userwarnings import WarningRelocator
        self.relocator = WarningRelocator(__name__, __file__)
        self.relocator.install()

    def _uninstall(self) -> None:
        # Only our own wrappers are undone: one someone put on top of ours stays (ours under it
        # is a pass-through once no capture is open).
        for owner, name, original, wrapper in reversed(self.undo):
            current = owner.__dict__.get(name) if isinstance(owner, type) else \
                getattr(owner, name, None)
            if current is wrapper:
                setattr(owner, name, original)
        self.undo = []
        if self.relocator is not None:
            self.relocator.remove()
            self.relocator = None

    # -- wrappers ------------------------------------------------------------------------------
    def _clip_wrapper(self, original: Any, name: str) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
            if patches._open():
                if isinstance(parameters, torch.Tensor):
                    params = [parameters]
                else:
                    params = list(parameters)
                    if isinstance(parameters, types.GeneratorType):
                        # torch warns about an empty *generator*: hand it one again
                        parameters = (p for p in params)
                    elif iter(parameters) is parameters:  # a one-shot iterator we used up
                        parameters = params
                patches._tell("a gradient clipping call", "_on_clip", name, params)
            return original(parameters, *args, **kwargs)
        return clip

    def _scheduler_wrapper(self, original: Any) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def step(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(patches.local, "sched_depth", 0)
            # the constructor's own first step (_step_count is 0 only then)
            initial = getattr(scheduler, "_step_count", 1) == 0
            if depth == 0 and not initial:
                patches._tell("a scheduler step", "_on_scheduler_step", scheduler)
            patches.local.sched_depth = depth + 1
            try:
                return original(scheduler, *args, **kwargs)
            finally:
                patches.local.sched_depth = depth
        return step

    def _init_wrapper(self, original: Any) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def __init__(optimizer: Any, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            patches._tell("an optimizer's construction", "_on_optimizer_created", optimizer)
        return __init__

    def _scaler_wrapper(self, original: Any) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            before = [(cap, cap.steps_of(optimizer)) for cap in patches._open()]
            result = original(scaler, optimizer, *args, **kwargs)
            for cap, count in before:
                if cap.state == "open" and cap.steps_of(optimizer) == count:
                    cap._guard("a skipped GradScaler step",
                               lambda c=cap: c._on_scaler_skip(optimizer))
            return result
        return step


PATCHES = StepOrderPatches()


def lr_of(optimizer: Any) -> Optional[float]:
    """The first parameter group's learning rate as a Python number (None for a tensor lr:
    reading it would be a device read)."""
    try:
        lr = optimizer.param_groups[0]["lr"]
    except Exception:  # noqa: BLE001 - an odd optimizer
        return None
    return float(lr) if isinstance(lr, (int, float)) else None


class StepOrderEvents:
    """What a capture records from the wrappers above (mixed into ``Capture``): events in the
    same timeline as backward calls, optimizer steps and ``zero_grad`` calls."""

    optimizers: Any
    state: str

    def _event(self, kind: str, **data: Any) -> None:  # pragma: no cover - Capture's
        raise NotImplementedError

    def steps_of(self, optimizer: Any) -> int:
        return self.optimizers.steps_of(optimizer)

    def _on_clip(self, name: str, params: list) -> None:
        from .locations import user_location
        self._event("clip", fn=name, location=user_location(),
                    optimizer_ids=self.optimizers.owners(params), parameters=len(params))

    def _on_scheduler_step(self, scheduler: Any) -> None:
        from .locations import user_location
        optimizer = getattr(scheduler, "optimizer", None)
        optimizer = unwrap_optimizer(optimizer) or optimizer
        serial = self.optimizers.serial(optimizer) if optimizer is not None else None
        self._event("scheduler_step", scheduler=type(scheduler).__name__,
                    optimizer_id=serial, lr=lr_of(optimizer) if optimizer is not None else None,
                    optimizer_steps=self.optimizers.steps_of(optimizer) if serial else 0,
                    location=user_location())

    def _on_optimizer_created(self, optimizer: Any) -> None:
        from .locations import user_location
        location = user_location()
        serial = self.optimizers.serial(optimizer, location)
        self._event("optimizer_created", optimizer=type(optimizer).__name__,
                    optimizer_id=serial, location=location)

    def _on_scaler_skip(self, optimizer: Any) -> None:
        from .locations import user_location
        self._event("scaler_skip", optimizer=type(optimizer).__name__,
                    optimizer_id=self.optimizers.serial(optimizer), location=user_location())
