"""Step-order events that torch has no hook for: gradient clipping, learning-rate scheduler
steps, optimizer construction and the steps ``GradScaler`` skips.

One set of wrappers is shared by every open capture (installed with the first, removed with
the last, like the backward patches in ``capture``). Each wrapper calls the original unchanged
and tells the open captures what happened; a capture records plain data only.

- ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` (and the deprecated
  ``clip_grad_norm``): where clipping ran relative to backward and ``optimizer.step()``.
  Code that did ``from torch.nn.utils import clip_grad_norm_`` *before* the capture opened
  holds the original function: it is seen through the helpers both look up at each call
  (``_clip_grads_with_norm_``; ``_group_tensors_by_device_and_dtype``, called from
  ``clip_grad_value_``'s own code, which the wrapper recognises by its code object).
- ``LRScheduler.step`` (and ``ReduceLROnPlateau.step``): the scheduler's own first call from
  its constructor is not the user's and is skipped, as are the calls a ``SequentialLR`` or
  ``ChainedScheduler`` makes to the schedulers inside it.
- ``Optimizer.__init__``: where each optimizer was built (an optimizer built every iteration),
  and ``Module.load_state_dict``: weights restored before it (test-time adaptation episodes).
- ``GradScaler.step``: an optimizer step it skipped (Inf/NaN gradients) never reaches the
  optimizer, so a scheduler stepping right after it is not the user's ordering mistake.
- ``GradScaler.scale``: which scalers are in use, so that a clipping call can tell whether the
  gradients it clips are still multiplied by the loss scale (no ``scaler.unscale_(opt)``
  before it): the scaler's own per-optimizer stage says so, read without a device access.
"""
from __future__ import annotations

import functools
import math
import sys
import types
from typing import Any, Callable, Optional

import torch

from .handles import pass_through
from .patches import SharedPatches
from .optimizers import unwrap_optimizer

_CLIP_NAMES = ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm")


def _clip_modules() -> list:
    import torch.nn.utils as utils
    import torch.nn.utils.clip_grad as clip_grad
    return [utils, clip_grad]


def _scheduler_classes() -> list:
    """Every scheduler class that defines its own ``step`` (CosineAnnealingWarmRestarts,
    SequentialLR, ChainedScheduler, ReduceLROnPlateau override LRScheduler's)."""
    from torch.optim import lr_scheduler
    base = getattr(lr_scheduler, "LRScheduler", None) or lr_scheduler._LRScheduler
    classes = [base]
    for value in vars(lr_scheduler).values():
        if isinstance(value, type) and issubclass(value, base) and value is not base \
                and "step" in vars(value) and value not in classes:
            classes.append(value)
    plateau = getattr(lr_scheduler, "ReduceLROnPlateau", None)
    if plateau is not None and "step" in vars(plateau) and plateau not in classes:
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


class StepOrderPatches(SharedPatches):
    """The shared wrappers. ``add(capture)`` / ``remove(capture)``; a capture receives
    ``_on_clip(name, params)``, ``_on_scheduler_step(scheduler)``,
    ``_on_optimizer_created(optimizer)`` and ``_on_scaler_skip(optimizer)``."""

    def __init__(self) -> None:
        super().__init__()
        self.undo: list = []  # (owner, attribute, original, wrapper)
        self.generation = 0
        self.relocator: Optional[Any] = None

    def _tell(self, what: str, method: str, *args: Any) -> None:
        for cap in self._open():
            cap._guard(what, lambda c=cap: getattr(c, method)(*args))

    # -- install -------------------------------------------------------------------------------
    def _patch(self, owner: Any, name: str, make: Callable[[Any, int], Any]) -> None:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name,
                                                                                    None)
        if original is None:
            return
        wrapper = make(original, self.generation)
        setattr(owner, name, wrapper)
        self.undo.append((owner, name, original, wrapper))

    def _install(self) -> None:
        # A wrapper from an earlier install that someone else's wrapper kept in place must stay
        # a pass-through: it answers only to the install that made it (the generation).
        self.generation += 1
        import torch.nn.utils.clip_grad as clip_grad
        # clip_grad_norm_ looks its helper up at each call: wrapping the helper also sees the
        # clip_grad_norm_ a program imported by name before gradscope started (watch)
        inner = "_clip_grads_with_norm_" in vars(clip_grad)
        if inner:
            self._patch(clip_grad, "_clip_grads_with_norm_", self._norm_helper_wrapper)
            # its public name, which accelerate (Hugging Face's Trainer) calls itself
            for module in _clip_modules():
                if "clip_grads_with_norm_" in vars(module):
                    self._patch(module, "clip_grads_with_norm_", self._norm_helper_wrapper)
        # clip_grad_value_ has no helper of its own, but looks up the grouping helper at each
        # call: wrapped, it sees a clip_grad_value_ imported by name before we started
        value_code = _code_of(getattr(clip_grad, "clip_grad_value_", None))
        if value_code is not None and "_group_tensors_by_device_and_dtype" in vars(clip_grad):
            self._patch(clip_grad, "_group_tensors_by_device_and_dtype",
                        lambda f, g: self._grouping_wrapper(f, g, value_code))
        for module in _clip_modules():
            for name in _CLIP_NAMES:
                if hasattr(module, name) and not (inner and name != "clip_grad_value_"):
                    self._patch(module, name, lambda f, g, n=name: self._clip_wrapper(f, g, n))
        for cls in _scheduler_classes():
            self._patch(cls, "step", self._scheduler_wrapper)
        self._patch(torch.optim.Optimizer, "__init__", self._init_wrapper)
        self._patch(torch.nn.Module, "load_state_dict", self._load_wrapper)
        for cls in _scaler_classes():
            self._patch(cls, "step", self._scaler_wrapper)
            if "scale" in vars(cls):
                self._patch(cls, "scale", self._scale_wrapper)
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
        self.generation += 1
        if self.relocator is not None:
            self.relocator.remove()
            self.relocator = None

    def _listening(self, generation: int, depth_key: Optional[str] = None) -> list:
        """The open captures a wrapper of ``generation`` reports to: none while torch.compile
        traces (the call must compile as if we were not there), none for a stale wrapper, none
        inside a call of the same kind (``clip_grad_norm`` calls ``clip_grad_norm_``;
        ``SequentialLR.step`` calls its schedulers' ``step``)."""
        if generation != self.generation or torch.compiler.is_compiling():
            return []
        if depth_key is not None and getattr(self.local, depth_key, 0):
            return []
        return self._open()

    def _nested(self, depth_key: str, call: Callable[[], Any]) -> Any:
        depth = getattr(self.local, depth_key, 0)
        setattr(self.local, depth_key, depth + 1)
        try:
            return call()
        finally:
            setattr(self.local, depth_key, depth)

    # -- wrappers ------------------------------------------------------------------------------
    def _clip_wrapper(self, original: Any, generation: int, name: str) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
            if not patches._listening(generation, "clip_depth"):
                return original(parameters, *args, **kwargs)
            try:
                params, parameters = _materialise(parameters)
            except Exception:  # noqa: BLE001 - let torch raise its own error about it
                return original(parameters, *args, **kwargs)
            limit = args[0] if args else kwargs.get("max_norm", kwargs.get("clip_value"))
            patches._tell("a gradient clipping call", "_on_clip", name, params, limit)
            return patches._nested("clip_depth",
                                   lambda: original(parameters, *args, **kwargs))
        return clip

    def _norm_helper_wrapper(self, original: Any, generation: int) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def clip_grads_with_norm_(parameters: Any, max_norm: Any, *args: Any,
                                  **kwargs: Any) -> Any:
            if patches._listening(generation):
                params = [parameters] if isinstance(parameters, torch.Tensor) \
                    else list(parameters)  # (clip_grad_norm_ passes a list)
                patches._tell("a gradient clipping call", "_on_clip", "clip_grad_norm_",
                              params, max_norm)
            return original(parameters, max_norm, *args, **kwargs)
        return clip_grads_with_norm_

    def _grouping_wrapper(self, original: Any, generation: int, value_code: Any) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def group(tensorlistlist: Any, *args: Any, **kwargs: Any) -> Any:
            # (listening first: it is False while torch.compile traces, which cannot trace
            # sys._getframe)
            caller = sys._getframe(1) if patches._listening(generation, "clip_depth") else None
            if caller is not None and caller.f_code is value_code:
                grads = list(tensorlistlist[0]) if tensorlistlist else []
                limit = caller.f_locals.get("clip_value")
                del caller
                patches._tell("a gradient clipping call", "_on_clip_grads",
                              "clip_grad_value_", grads, limit)
            return original(tensorlistlist, *args, **kwargs)
        return group

    def _scheduler_wrapper(self, original: Any, generation: int) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def step(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            if not patches._listening(generation, "sched_depth") or _initial(scheduler):
                return patches._nested("sched_depth",
                                       lambda: original(scheduler, *args, **kwargs))
            before = lr_of(_scheduled(scheduler))
            result = patches._nested("sched_depth", lambda: original(scheduler, *args, **kwargs))
            patches._tell("a scheduler step", "_on_scheduler_step", scheduler, before)
            return result
        return step

    def _init_wrapper(self, original: Any, generation: int) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def __init__(optimizer: Any, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            if patches._listening(generation):
                patches._tell("an optimizer's construction", "_on_optimizer_created", optimizer)
        return __init__

    def _load_wrapper(self, original: Any, generation: int) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def load_state_dict(module: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(module, *args, **kwargs)
            if patches._listening(generation):
                patches._tell("a load_state_dict call", "_on_load_state_dict", module)
            return result
        return load_state_dict

    def _scaler_wrapper(self, original: Any, generation: int) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            caps = patches._listening(generation)
            for cap in caps:
                cap._note_scaler(scaler, optimizer)
            before = [(cap, cap.steps_of(optimizer)) for cap in caps]
            result = original(scaler, optimizer, *args, **kwargs)
            for cap, count in before:
                if cap.state == "open" and cap.steps_of(optimizer) == count:
                    cap._guard("a skipped GradScaler step",
                               lambda c=cap: c._on_scaler_skip(optimizer))
            return result
        return step

    def _scale_wrapper(self, original: Any, generation: int) -> Any:
        patches = self

        @pass_through
        @functools.wraps(original)
        def scale(scaler: Any, outputs: Any) -> Any:
            for cap in patches._listening(generation):
                cap._note_scaler(scaler)
            return original(scaler, outputs)
        return scale


def _code_of(fn: Any) -> Any:
    """The code object of ``fn`` under its decorators (torch's ``_no_grad``), or None."""
    try:
        import inspect
        return inspect.unwrap(fn).__code__ if fn is not None else None
    except Exception:  # noqa: BLE001 - not a plain function: nothing to recognise
        return None


def _initial(scheduler: Any) -> bool:
    """The step a scheduler's constructor makes itself (not the user's): torch marks it with
    ``_is_initial``; older releases only with ``_step_count == 0`` (which
    CosineAnnealingWarmRestarts never moves on from, so that is the fallback only)."""
    marked = getattr(scheduler, "_is_initial", None)
    if marked is not None:
        return bool(marked)
    return getattr(scheduler, "_step_count", 1) == 0


def _materialise(parameters: Any) -> tuple:
    """(the parameters as a list, what to hand torch instead): a generator is given back as a
    generator (torch warns about an empty one), a one-shot iterator we used up as the list."""
    if isinstance(parameters, torch.Tensor):
        return [parameters], parameters
    params = list(parameters)
    if isinstance(parameters, types.GeneratorType):
        return params, (p for p in params)
    if iter(parameters) is parameters:
        return params, params
    return params, parameters


PATCHES = StepOrderPatches()


def _scheduled(scheduler: Any) -> Any:
    """The torch optimizer a scheduler drives (inside accelerate's wrapper, say)."""
    optimizer = getattr(scheduler, "optimizer", None)
    return unwrap_optimizer(optimizer) or optimizer


def lr_of(optimizer: Any) -> Optional[float]:
    """The first parameter group's learning rate as a Python number (None for a tensor lr:
    reading it would be a device read)."""
    if optimizer is None:
        return None
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
    _scalers: Any        # weakref.WeakSet of the GradScalers seen (set by Capture)
    _scaler_steps: set   # (id(scaler), id(optimizer)) pairs a scaler stepped

    def _event(self, kind: str, **data: Any) -> None:  # pragma: no cover - Capture's
        raise NotImplementedError

    def _wake(self) -> None:  # pragma: no cover - Capture's: idle steps into the records
        pass

    def steps_of(self, optimizer: Any) -> int:
        try:
            return self.optimizers.steps_of(optimizer)
        except Exception:  # noqa: BLE001 - an odd object: never an error in the user's call
            return -1

    def _note_scaler(self, scaler: Any, optimizer: Any = None) -> None:
        """A GradScaler scaled a loss, or stepped ``optimizer`` (called every step: cheap)."""
        try:
            self._scalers.add(scaler)
        except TypeError:  # not weak-referenceable: an odd subclass
            return
        if optimizer is not None:  # which optimizers each scaler steps
            self._scaler_steps.add((id(scaler), id(optimizer)))

    def _scaled_clip(self, owners: list) -> Optional[float]:
        """The initial scale of an enabled GradScaler whose gradients for one of the optimizers
        ``owners`` are still scaled (it has not unscaled them for this step), else None."""
        if not self._scalers:
            return None
        stepped = self._scaler_steps
        live = [self.optimizers._live.get(serial) for serial in owners]
        optimizers = [ref() for ref in live if ref is not None]
        for scaler in list(self._scalers):
            try:
                if not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
                    continue
                # only the optimizers this scaler steps (a second scaler's, or one trained
                # without any, are none of its business): known from its first step on, so a
                # clip before the first scaler.step() is not judged
                mine = [opt for opt in optimizers if (id(scaler), id(opt)) in stepped]
                states = dict(scaler._per_optimizer_states)  # (a defaultdict: never .get-create)

                def stage_of(opt: Any) -> str:
                    state = states.get(id(opt))
                    stage = state.get("stage") if state else None
                    return getattr(stage, "name", "READY") if stage is not None else "READY"
                # Still scaled only if no optimizer holding these parameters was unscaled (or
                # stepped) by this scaler this step: an earlier optimizer over the same
                # parameters (a warm-up stage's, still alive) is never unscaled again, and a
                # new one is not known to be this scaler's before its first scaler.step().
                if mine and all(stage_of(opt) == "READY" for opt in optimizers):
                    return float(getattr(scaler, "_init_scale", 65536.0))
            except Exception:  # noqa: BLE001 - another GradScaler's internals: no finding
                continue
        return None

    def _on_clip_grads(self, name: str, grads: list, limit: Any = None) -> None:
        """A clipping call seen from the inside, with the gradients it clips: the parameters
        are the optimizers' whose .grad these are."""
        self._wake()  # the counts below include any idle steps
        ids = {id(g) for g in grads}
        params = {id(p): p for opt in self.optimizers.live() for group in opt.param_groups
                  for p in group["params"]
                  if isinstance(p, torch.Tensor) and p.grad is not None and id(p.grad) in ids}
        self._on_clip(name, list(params.values()) if params else grads, limit)

    def _on_clip(self, name: str, params: list, limit: Any = None) -> None:
        self._wake()  # the counts below include any idle steps
        from .locations import user_location
        extra = {}
        if isinstance(limit, (int, float)) and math.isinf(limit):
            extra["measure_only"] = True  # clip_grad_norm_(params, inf): a norm for the logs
        owners = self.optimizers.owners(params)
        scale = self._scaled_clip(owners) if not extra else None
        if scale is not None:
            extra["scaled"] = scale  # GradScaler's gradients, clipped before unscale_
        self._event("clip", fn=name, location=user_location(), optimizer_ids=owners,
                    parameters=len(params), **extra)

    def _on_scheduler_step(self, scheduler: Any, lr_before: Optional[float] = None) -> None:
        self._wake()  # the counts below include any idle steps
        from .locations import user_location
        optimizer = _scheduled(scheduler)
        serial = self.optimizers.serial(optimizer) if optimizer is not None else None
        self._event("scheduler_step", scheduler=type(scheduler).__name__,
                    optimizer_id=serial, lr=lr_before,
                    lr_after=lr_of(optimizer) if optimizer is not None else None,
                    optimizer_steps=self.optimizers.steps_of(optimizer) if serial else 0,
                    location=user_location())

    def _on_optimizer_created(self, optimizer: Any) -> None:
        self._wake()  # the counts below include any idle steps
        from .locations import user_location
        location = user_location()
        serial = self.optimizers.serial(optimizer, location)
        self._event("optimizer_created", optimizer=type(optimizer).__name__,
                    optimizer_id=serial, location=location)

    def _on_load_state_dict(self, module: Any) -> None:
        self._wake()  # the counts below include any idle steps
        from .locations import user_location
        self._event("load_state_dict", owner=type(module).__name__, location=user_location())

    def _on_scaler_skip(self, optimizer: Any) -> None:
        self._wake()  # the counts below include any idle steps
        from .locations import user_location
        self._event("scaler_skip", optimizer=type(optimizer).__name__,
                    optimizer_id=self.optimizers.serial(optimizer), location=user_location())
