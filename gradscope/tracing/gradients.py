"""Gradient accumulation and gradient health, recorded without a host sync inside any hook.

Per parameter, two tensor hooks:
- before accumulation (``Tensor.register_hook`` on the leaf): every backward looks at ``.grad``
  as the user left it. ``None`` or another tensor object than after the previous accumulation
  means it was reset (``zero_grad(set_to_none=True)``, ``p.grad = None``). The same object is
  fingerprinted: a few fixed elements are copied on the device. At the next step, zeros mean it
  was zeroed in place (``zero_grad(set_to_none=False)``, ``p.grad.data.zero_()``, which no
  version counter reveals), and values equal to those at the previous step mean the old gradient
  was carried into this step (a forgotten ``zero_grad``).
- after accumulation (``register_post_accumulate_grad_hook``): counts backward contributions.

At each optimizer step (global step pre-hook) the gradient norms and max-abs values of the
stepped parameters are computed on their device with fused ``_foreach_norm`` kernels, and
everything pending is read back in **one** transfer per device: at most one synchronisation per
optimizer step, by design. Nothing here draws random numbers or keeps user tensors alive: the
recorder holds weak references to parameters and gradients, and the fingerprints are a few
elements each.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Optional

import torch

from .handles import HandleGroup, ours
from .locations import user_location

FINGERPRINT = 4           # elements compared per parameter
MAX_NORM_STEPS = 1000     # per-step norms kept; beyond that every other one is dropped
DENSE_MAXABS = 8          # max-abs read at every one of the first steps, then every SPARSE-th
SPARSE_MAXABS = 8


_LOW_PRECISION = (torch.float16, torch.bfloat16)
_CUDA: list = []  # torch.cuda.is_available(), asked once


def stream_capturing() -> bool:
    """Is a CUDA graph being captured on the current stream? Then nothing may synchronise (the
    capture would be invalidated), and replays of the graph run no Python hooks at all."""
    if not _CUDA:
        _CUDA.append(torch.cuda.is_available())
    return _CUDA[0] and torch.cuda.is_current_stream_capturing()


def fused_norms(grads: list, order: float = 2.0) -> list:
    """Norms of many tensors of one device as float32 scalars, one fused kernel per dtype.

    fp16/bf16 L2 norms are accumulated and returned in float32: in fp16 a norm above 65504
    overflows to Inf (a gradient of 100 elements of 10,000 would read as non-finite). float64
    and complex gradients keep their own precision (torch refuses to narrow them) and only
    the result is cast. The max-abs norm is exact in any dtype."""
    by_dtype: dict = {}
    for k, g in enumerate(grads):
        by_dtype.setdefault(g.dtype, []).append(k)
    out: list = [None] * len(grads)
    for dtype, ks in by_dtype.items():
        norms = _norms_of_one_dtype([grads[k] for k in ks], order,
                                    dtype in _LOW_PRECISION and order != float("inf"))
        for k, n in zip(ks, norms):
            out[k] = n if n.dtype == torch.float32 else n.float()
    return out


def read_per_device(values: list) -> list:
    """The Python values of 0-d device tensors, in order, with one transfer per device: a read
    per tensor would be one synchronisation each on a GPU."""
    by_device: dict = {}
    for k, v in enumerate(values):
        by_device.setdefault(v.device, []).append(k)
    host: list = [None] * len(values)
    for ks in by_device.values():
        for k, v in zip(ks, torch.stack([values[k] for k in ks]).tolist()):
            host[k] = v
    return host


def _norms_of_one_dtype(grads: list, order: float, upcast: bool) -> list:
    try:
        if upcast:
            return list(torch._foreach_norm(grads, order, dtype=torch.float32))
        return list(torch._foreach_norm(grads, order))
    except (AttributeError, TypeError, RuntimeError):  # a torch without it, or without dtype=
        if order == float("inf"):
            return [g.abs().max() for g in grads]
        return [torch.linalg.vector_norm(g, order, dtype=torch.float32 if upcast else None)
                for g in grads]


def _fingerprint_index(numel: int, device: torch.device) -> torch.Tensor:
    """Positions 0, n/3, 2n/3 and n-1, made on the device: ``torch.tensor(list, device=cuda)``
    would be a blocking host-to-device copy, one per parameter, inside the backward hooks."""
    index = torch.arange(FINGERPRINT, dtype=torch.long, device=device).mul_(numel // 3)
    index[-1] = max(numel - 1, 0)  # a scalar fill: a kernel argument, no copy
    return index


class _ParamState:
    __slots__ = ("ref", "name", "since_step", "summed", "last_grad",
                 "fp_after", "fps", "reset_at", "index", "grad_version")

    def __init__(self, param: torch.Tensor, name: tuple) -> None:
        self.ref = weakref.ref(param)
        self.name = name                 # (model, qualified name)
        self.since_step = 0              # backward contributions since the last optimizer step
        self.summed = 0                  # contributions in .grad since its last reset
        self.last_grad: Any = None       # weak ref to .grad after the last accumulation
        self.fp_after: Optional[torch.Tensor] = None  # fingerprint at the last step
        self.fps: list = []              # (fingerprint, since_step) before each backward
        self.reset_at: Optional[int] = None  # since_step when .grad was last replaced/cleared
        self.index: Optional[torch.Tensor] = None
        self.grad_version: Optional[int] = None  # .grad's version counter after the last step


MAX_FINGERPRINTS = 64
MAX_STEP_RECORDS = 10_000  # accumulation records kept; later steps still feed the checks' counts  # per parameter and step: backward calls looked at before giving up


class GradientRecorder:
    """Accumulation per step, gradient norms per step, non-finite gradients and losses."""

    def __init__(self) -> None:
        self._params: dict = {}          # id(param) -> _ParamState
        self.seen: set = set()           # ids of parameters that ever received a gradient
        self.steps: list = []            # plain-data record per optimizer step
        self.norm_steps: list = []       # step indices whose norms are kept
        self.norms: dict = {}            # (model, name) -> [norm per kept step]
        self.maxabs: dict = {}
        self.nonfinite: list = []        # {"step", "params": [...]}
        self.losses_nonfinite: list = []  # {"backward", "location"}
        self._norm_stride = 1
        self._pending_losses: list = []  # (backward index, location, device bool tensor)
        self.syncs = 0                   # host reads performed (tests check: <= 1 per step)
        self.captured_steps = 0          # steps inside CUDA graph capture: not recorded
        self.dead_steps_past_records = 0  # steps after MAX_STEP_RECORDS that updated nothing
        self.errors: list = []           # failures inside our hooks, for the report's notes

    # -- registration --------------------------------------------------------------------------
    def watch(self, param: torch.Tensor, name: tuple, handles: HandleGroup) -> None:
        if param.numel() == 0 or param.device.type == "meta":
            # nothing to measure (index/foreach kernels reject empty tensors; meta tensors,
            # used for shape runs, have no values to read)
            return
        if id(param) in self._params and self._params[id(param)].ref() is param:
            state = self._params[id(param)]
            if state.name[0] is None and name[0] is not None:
                self._rename(state, name)  # watched as an optimizer's, then its model ran
            return
        state = self._params[id(param)] = _ParamState(param, name)
        handles.add(param.register_hook(self._make_pre_hook(state)))
        handles.add(param.register_post_accumulate_grad_hook(self._make_post_hook(state)))

    def _rename(self, state: _ParamState, name: tuple) -> None:
        old, new = _display(state.name), _display(name)
        state.name = name
        for series in (self.norms, self.maxabs):
            if old in series:
                series[new] = series.pop(old) + series.pop(new, [])
        for record in self.steps:
            record["carried"] = [new if n == old else n for n in record.get("carried", [])]

    def watching(self, param: torch.Tensor) -> bool:
        state = self._params.get(id(param))
        return state is not None and state.ref() is param

    @ours
    def _safely(self, fn: Callable, state: _ParamState) -> None:
        # Hooks run inside the user's backward: a bug of ours must never surface there.
        try:
            fn(state)
        except Exception as e:  # noqa: BLE001 - kept for the report's notes
            if len(self.errors) < 10:
                self.errors.append(f"gradient hook for {_display(state.name)}: {e!r}")

    def _make_pre_hook(self, state: _ParamState) -> Callable:
        def before_accumulation(grad: torch.Tensor) -> None:
            self._safely(self._before, state)
            return None  # a returned value would replace the gradient
        return before_accumulation

    def _make_post_hook(self, state: _ParamState) -> Callable:
        def after_accumulation(param: torch.Tensor) -> None:
            self._safely(self._after, state)
            return None
        return after_accumulation

    def _after(self, state: _ParamState) -> None:
        state.since_step += 1
        param = state.ref()
        if param is not None:
            self.seen.add(id(param))
            state.last_grad = weakref.ref(param.grad) if param.grad is not None else None

    def _before(self, state: _ParamState) -> None:
        """Before each accumulation: was .grad reset since the last one?

        A cleared or replaced .grad (set_to_none, ``p.grad = None``, a new tensor) is seen at
        once. A gradient zeroed in place (``zero_grad(set_to_none=False)``, ``.data.zero_()``)
        is only visible in its values, so a few elements are copied on the device and compared
        at the next optimizer step (no host read here)."""
        if stream_capturing():
            return
        param = state.ref()
        grad = None if param is None else param.grad
        last = state.last_grad() if state.last_grad is not None else None
        if grad is None or grad is not last:
            state.reset_at = state.since_step
            return
        if len(state.fps) < MAX_FINGERPRINTS:
            if state.index is None or state.index.device != grad.device:
                state.index = _fingerprint_index(grad.numel(), grad.device)
            with torch.no_grad():
                fp = grad.detach().reshape(-1).index_select(0, state.index)  # a new tensor
            state.fps.append((fp, state.since_step))

    def note_loss(self, roots: Any, index: int) -> None:
        """Queue a finiteness check of a backward root (read at the next sync)."""
        if isinstance(roots, torch.Tensor) and roots.is_floating_point() \
                and roots.device.type != "meta" and not stream_capturing():
            with torch.no_grad():
                ok = torch.isfinite(roots.detach()).all()
            self._pending_losses.append((index, user_location(), ok))
            if len(self._pending_losses) >= 256:  # no optimizer steps to read them with
                self.finish_losses()

    # -- optimizer step ------------------------------------------------------------------------
    def on_step(self, optimizer: Any, step: int, serial: Optional[int] = None) -> None:
        """Record the step: accumulation per parameter, norms, non-finite values; one sync."""
        if stream_capturing():
            self.captured_steps += 1
            return
        states = []
        cleared = 0  # parameters that got gradients since the last step, and have none now
        # dead-training: of the trainable parameters this step updates, how many received a
        # gradient from backward since the last step, and how many hold one written by other
        # code (torch.autograd.grad results assigned to .grad, say)
        trainable = received = assigned = 0
        written: set = set()  # ids of .grad tensors written in place since the last step
        for group in optimizer.param_groups:
            for p in group["params"]:
                if not isinstance(p, torch.Tensor):
                    continue
                trainable += p.requires_grad
                state = self._params.get(id(p))
                if state is None or state.ref() is not p:
                    assigned += p.grad is not None
                    continue
                if state.since_step > 0:
                    received += 1
                elif p.grad is not None and (state.last_grad is None
                                             or state.last_grad() is not p.grad):
                    assigned += 1
                elif p.grad is not None and state.grad_version is not None \
                        and p.grad._version != state.grad_version:
                    # p.grad.copy_(...) (Reptile's meta step), or only zero_() by zero_grad
                    # (set_to_none=False): told apart by the norm read below
                    written.add(id(p))
                if p.grad is None:
                    if state.since_step > 0:  # zero_grad() between backward() and step()
                        cleared += 1
                        state.since_step, state.reset_at, state.fps = 0, None, []
                elif p.grad.layout == torch.strided:
                    states.append((state, p))
        keep_norms = (step - 1) % self._norm_stride == 0
        # The L2 norm is read every step (it also reveals NaN/Inf); the max-abs pass costs as
        # much again (a read of every gradient), so after the first steps it is sampled.
        want_max = step <= DENSE_MAXABS or step % SPARSE_MAXABS == 0
        values = self._read_once(states, want_max, _scaler_found_inf(optimizer))
        if values["found_inf"]:
            # GradScaler found Inf/NaN and the fused optimizer skipped this update: like a skipped
            # step of any other optimizer (which is never called), it adds no gradient norms
            # (partly Inf: filtering those out left a tiny total that seemed to explode later).
            keep_norms = False
        self._record_step(optimizer, step, states, values, keep_norms, cleared)
        assigned += sum(1 for k, (_, p) in enumerate(states)
                        if id(p) in written and values["norm"][k] not in (0.0, None))
        if len(self.steps) <= MAX_STEP_RECORDS and self.steps[-1]["step"] == step:
            self.steps[-1].update(optimizer_id=serial, trainable=trainable, received=received,
                                  assigned=assigned)
        elif trainable and not received and not assigned:
            self.dead_steps_past_records += 1
        for state, p in states:  # what the next backward calls are compared with
            if state.index is None or state.index.device != p.grad.device:
                state.index = _fingerprint_index(p.grad.numel(), p.grad.device)
            with torch.no_grad():
                state.fp_after = p.grad.detach().reshape(-1).index_select(0, state.index)
            state.grad_version = p.grad._version

    def _read_once(self, states: list, want_max: bool,
                   found_inf: Optional[torch.Tensor] = None) -> dict:
        """Everything this step needs from the devices, in one transfer per device.

        ``found_inf`` is GradScaler's flag on a fused optimizer: read with the gradients of its
        device, so that a skipped step costs no second synchronisation. (This runs after the
        step: a fused kernel has unscaled ``.grad`` in place by then, so norms are true ones.)"""
        by_device: dict = {}
        for k, (state, p) in enumerate(states):
            by_device.setdefault(p.grad.device, []).append(k)
        out = {"norm": [math.nan] * len(states), "max": [math.nan] * len(states),
               "flags": [[] for _ in states], "found_inf": None}
        for device, ks in by_device.items():
            scaler_flag = found_inf if found_inf is not None and found_inf.device == device \
                and out["found_inf"] is None else None
            grads = [states[k][1].grad.detach() for k in ks]
            with torch.no_grad():
                norms = fused_norms(grads)
                maxes = fused_norms(grads, float("inf")) if want_max else norms
                parts = [torch.stack(norms), torch.stack(maxes)]  # float32 already
                layout = []  # per parameter: how many fingerprint flags follow
                flags: list = []
                unknown = torch.zeros((), dtype=torch.bool, device=device)  # one per device
                for k in ks:
                    mine = _fingerprint_flags(states[k][0], device, unknown)
                    layout.append(len(mine))
                    flags.extend(mine)
                losses = [ok for _, _, ok in self._pending_losses if ok.device == device]
                if flags or losses:  # one stack and one cast for all flags, not one per flag
                    parts.append(torch.stack(flags + losses).float())
                if scaler_flag is not None:
                    parts.append(scaler_flag.reshape(-1)[:1].float())
                flat = torch.cat(parts)
            host = flat.tolist()
            self.syncs += 1
            if scaler_flag is not None:
                out["found_inf"] = host.pop() > 0.5
            n = len(ks)
            pos = 2 * n
            for j, k in enumerate(ks):
                out["norm"][k] = host[j]
                out["max"][k] = host[n + j] if want_max else None
                out["flags"][k] = [v > 0.5 for v in host[pos:pos + layout[j]]]
                pos += layout[j]
            if losses:
                self._resolve_losses(device, host[pos:])
        return out

    def _resolve_losses(self, device: Any, flags: list) -> None:
        rest = []
        it = iter(flags)
        for index, location, ok in self._pending_losses:
            if ok.device == device:
                if next(it) < 0.5:
                    self.losses_nonfinite.append({"backward": index, "location": location})
            else:
                rest.append((index, location, ok))
        self._pending_losses = rest

    def _record_step(self, optimizer: Any, step: int, states: list, values: dict,
                     keep_norms: bool, cleared: int = 0) -> None:
        summed: dict = {}
        fresh: dict = {}
        carried_names = []
        bad = []
        contributed, zeros = cleared, 0
        for k, (state, p) in enumerate(states):
            carried, new = _carried(state, values["flags"][k])
            if new > 0:
                contributed += 1
                if values["norm"][k] == 0.0:  # zeroed in place, or truly zero (dead units)
                    zeros += 1
            state.summed = new + (state.summed if carried else 0)
            name = _display(state.name)
            if carried:
                carried_names.append(name)
            summed.setdefault(state.summed, []).append(name)
            fresh[new] = fresh.get(new, 0) + 1
            if not math.isfinite(values["norm"][k]):
                bad.append(name)
            state.since_step = 0
            state.reset_at = None
            state.fps = []
        record = {"step": step, "optimizer": type(optimizer).__name__,
                  "location": user_location(), "parameters": len(states),
                  # backward calls in .grad since the previous step or the last reset, whichever
                  # came later (the most common count over the step's parameters)
                  "backward_calls": max(fresh, key=fresh.get) if fresh else 0,
                  # backward calls summed into .grad since its last reset -> parameters
                  "summed": {str(n): names if len(summed) > 1 else len(names)
                             for n, names in sorted(summed.items())},
                  "carried": carried_names}
        if values.get("found_inf"):
            record["skipped_by_scaler"] = True
        if cleared or zeros:
            # of the parameters that received gradients since the previous step, how many have
            # none (.grad is None) and how many all zeros when this step runs
            record["cleared"], record["zeros"] = cleared, zeros
            record["contributed"] = contributed
        if len(self.steps) < MAX_STEP_RECORDS:
            self.steps.append(record)
        elif len(self.steps) == MAX_STEP_RECORDS:
            self.steps.append({"step": step, "truncated": True, "optimizer": record["optimizer"],
                               "location": record["location"], "parameters": 0,
                               "backward_calls": 0, "summed": {}, "carried": []})
        if bad and not self._skipped_by_scaler(optimizer, values["found_inf"]):
            self.nonfinite.append({"step": step, "params": bad})
        if keep_norms:
            self.norm_steps.append(step)
            for k, (state, _) in enumerate(states):
                key = _display(state.name)
                self.norms.setdefault(key, []).append(values["norm"][k])
                self.maxabs.setdefault(key, []).append(values["max"][k])
            if len(self.norm_steps) >= MAX_NORM_STEPS:  # keep memory flat on long runs
                self.norm_steps = self.norm_steps[::2]
                self.norms = {k: v[::2] for k, v in self.norms.items()}
                self.maxabs = {k: v[::2] for k, v in self.maxabs.items()}
                self._norm_stride *= 2

    def _skipped_by_scaler(self, optimizer: Any, read: Optional[bool]) -> bool:
        """Did GradScaler find Inf/NaN and make this fused optimizer skip the step?"""
        if read is not None:
            return read
        found_inf = _scaler_found_inf(optimizer)
        if found_inf is None:
            return False
        try:  # the flag lives on a device none of this step's gradients are on: read it alone
            self.syncs += 1
            return bool(found_inf.item())
        except Exception:  # noqa: BLE001
            return False

    def finish_losses(self) -> None:
        """Read the pending loss checks (one transfer per device)."""
        for device in {ok.device for _, _, ok in self._pending_losses}:
            flags = torch.stack([ok for _, _, ok in self._pending_losses
                                 if ok.device == device]).float().tolist()
            self.syncs += 1
            self._resolve_losses(device, flags)

    def finish(self) -> None:
        """Read what is still pending (losses after the last step) and drop device tensors."""
        self.finish_losses()
        for state in self._params.values():
            state.fp_after = state.index = None
            state.fps = []
            state.last_grad = None

    def snapshot(self) -> dict:
        return {"accumulation": list(self.steps), "norm_steps": list(self.norm_steps),
                "grad_norms": {k: list(v) for k, v in self.norms.items()},
                "grad_maxabs": {k: list(v) for k, v in self.maxabs.items()},
                "nonfinite_grads": list(self.nonfinite),
                "nonfinite_losses": list(self.losses_nonfinite),
                "dead_steps_past_records": self.dead_steps_past_records}


def _fingerprint_flags(state: _ParamState, device: Any, unknown: torch.Tensor) -> list:
    """Device booleans for one parameter: [unchanged since the last step and non-zero, then one
    "all zero" flag per fingerprint taken before a backward]. ``unknown`` is a shared False."""
    fps = [(fp, c) for fp, c in state.fps if fp.device == device]
    if len(fps) != len(state.fps):
        return []
    if fps and fps[0][1] == 0 and state.fp_after is not None \
            and state.fp_after.device == device:
        same = (fps[0][0] == state.fp_after).all() & fps[0][0].ne(0).any()
    else:
        same = unknown
    return [same] + [(fp == 0).all() for fp, _ in fps]


def _carried(state: _ParamState, flags: list) -> tuple:
    """(old gradient carried into this step?, backward calls since the step or the last reset)."""
    latest = state.reset_at                  # cleared or replaced before that backward
    if flags:
        for (_, count), zero in zip(state.fps, flags[1:]):
            if zero:                         # zeroed in place before that backward
                latest = count if latest is None else max(latest, count)
    if latest is not None:
        return False, state.since_step - latest
    if flags and flags[0] and state.reset_at is None:
        return True, state.since_step       # untouched since the step: carried over
    return False, state.since_step           # first step, or changed in place (scaled, say)


def _scaler_found_inf(optimizer: Any) -> Optional[torch.Tensor]:
    """GradScaler's Inf/NaN flag when it steps a fused optimizer (which is always called and
    skips the update itself), else None."""
    found_inf = getattr(optimizer, "found_inf", None)
    return found_inf if isinstance(found_inf, torch.Tensor) and found_inf.numel() else None


def _display(name: tuple) -> str:
    model, qual = name
    return f"{model}.{qual}" if model else qual
