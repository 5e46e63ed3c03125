"""Gradient accumulation and gradient health, recorded without a host sync inside any hook.

Per parameter, two tensor hooks:
- before accumulation (``Tensor.register_hook`` on the leaf): the first backward after an
  optimizer step looks at ``.grad`` as the user left it. ``None`` or a new tensor object means it
  was reset (``zero_grad(set_to_none=True)``, ``p.grad = None``). The same object is fingerprinted:
  a few fixed elements are copied on the device, to be compared with the copy taken at the step.
  Unchanged values mean the old gradient was carried into the next step (a forgotten
  ``zero_grad``); zeros mean it was zeroed in place (``zero_grad(set_to_none=False)``,
  ``p.grad.data.zero_()``), which no version counter reveals.
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

from .handles import HandleGroup
from .locations import user_location

FINGERPRINT = 4           # elements compared per parameter
MAX_NORM_STEPS = 1000     # per-step norms kept; beyond that every other one is dropped
DENSE_MAXABS = 8          # max-abs read at every one of the first steps, then every SPARSE-th
SPARSE_MAXABS = 8


def _fingerprint_index(numel: int, device: torch.device) -> torch.Tensor:
    picks = sorted({0, numel // 3, (2 * numel) // 3, max(numel - 1, 0)})
    return torch.tensor(picks, dtype=torch.long, device=device)


class _ParamState:
    __slots__ = ("ref", "name", "since_step", "summed", "after_step", "grad_ref", "fp_after",
                 "fp_before", "index", "reset_seen")

    def __init__(self, param: torch.Tensor, name: tuple) -> None:
        self.ref = weakref.ref(param)
        self.name = name                 # (model, qualified name)
        self.since_step = 0              # backward contributions since the last optimizer step
        self.summed = 0                  # contributions in .grad since its last reset
        self.after_step = False          # a step happened; the next backward checks for a reset
        self.grad_ref: Any = None        # weak ref to .grad as it was at the last step
        self.fp_after: Optional[torch.Tensor] = None   # fingerprint at the last step
        self.fp_before: Optional[torch.Tensor] = None  # fingerprint at the next backward
        self.index: Optional[torch.Tensor] = None
        self.reset_seen: Optional[bool] = None  # known without a fingerprint (None: pending)


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

    # -- registration --------------------------------------------------------------------------
    def watch(self, param: torch.Tensor, name: tuple, handles: HandleGroup) -> None:
        if id(param) in self._params and self._params[id(param)].ref() is param:
            return
        state = self._params[id(param)] = _ParamState(param, name)
        handles.add(param.register_hook(self._make_pre_hook(state)))
        handles.add(param.register_post_accumulate_grad_hook(self._make_post_hook(state)))

    def _make_pre_hook(self, state: _ParamState) -> Callable:
        def before_accumulation(grad: torch.Tensor) -> None:
            if state.after_step:
                state.after_step = False
                self._check_reset(state)
            return None  # a returned value would replace the gradient
        return before_accumulation

    def _make_post_hook(self, state: _ParamState) -> Callable:
        seen = self.seen

        def after_accumulation(param: torch.Tensor) -> None:
            state.since_step += 1
            seen.add(id(param))
            return None
        return after_accumulation

    def _check_reset(self, state: _ParamState) -> None:
        param = state.ref()
        grad = None if param is None else param.grad
        old = state.grad_ref() if state.grad_ref is not None else None
        if grad is None or old is None or grad is not old:
            state.reset_seen = True  # set to None (or replaced): a reset, no fingerprint needed
            return
        state.reset_seen = None
        with torch.no_grad():
            state.fp_before = grad.detach().reshape(-1).index_select(0, state.index).clone()

    def note_loss(self, roots: Any, index: int) -> None:
        """Queue a finiteness check of a backward root (read at the next sync)."""
        if isinstance(roots, torch.Tensor) and roots.is_floating_point():
            with torch.no_grad():
                ok = torch.isfinite(roots.detach()).all()
            self._pending_losses.append((index, user_location(), ok))

    # -- optimizer step ------------------------------------------------------------------------
    def on_step(self, optimizer: Any, step: int) -> None:
        """Record the step: accumulation per parameter, norms, non-finite values; one sync."""
        states = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = self._params.get(id(p))
                if state is not None and state.ref() is p and p.grad is not None \
                        and p.grad.layout == torch.strided:
                    states.append((state, p))
        keep_norms = (step - 1) % self._norm_stride == 0
        # The L2 norm is read every step (it also reveals NaN/Inf); the max-abs pass costs as
        # much again (a read of every gradient), so after the first steps it is sampled.
        want_max = step <= DENSE_MAXABS or step % SPARSE_MAXABS == 0
        values = self._read_once(states, want_max)
        self._record_step(optimizer, step, states, values, keep_norms)
        for state, p in states:  # arm the reset check for the next backward
            state.after_step = True
            state.grad_ref = weakref.ref(p.grad)
            if state.index is None or state.index.device != p.grad.device:
                state.index = _fingerprint_index(p.grad.numel(), p.grad.device)
            with torch.no_grad():
                state.fp_after = p.grad.detach().reshape(-1).index_select(0, state.index).clone()
            state.fp_before = None

    def _read_once(self, states: list, want_max: bool) -> dict:
        """Everything this step needs from the devices, in one transfer per device."""
        by_device: dict = {}
        for k, (state, p) in enumerate(states):
            by_device.setdefault(p.grad.device, []).append(k)
        out = {"norm": [math.nan] * len(states), "max": [math.nan] * len(states),
               "carried": [False] * len(states)}
        foreach_norm = getattr(torch, "_foreach_norm", None)
        for device, ks in by_device.items():
            grads = [states[k][1].grad.detach() for k in ks]
            with torch.no_grad():
                if foreach_norm is not None:
                    norms = foreach_norm(grads)
                    maxes = foreach_norm(grads, float("inf")) if want_max else norms
                else:
                    norms = [g.norm() for g in grads]
                    maxes = [g.abs().max() for g in grads] if want_max else norms
                carried = []
                for k in ks:
                    state = states[k][0]
                    if state.fp_before is not None and state.fp_after is not None \
                            and state.fp_before.device == device:
                        # same values as at the last step, and not all zero: never reset
                        carried.append((state.fp_before == state.fp_after).all()
                                       & state.fp_before.ne(0).any())
                    else:
                        carried.append(torch.zeros((), dtype=torch.bool, device=device))
                flat = torch.cat([torch.stack([n.float() for n in norms]),
                                  torch.stack([m.float() for m in maxes]),
                                  torch.stack(carried).float()])
                losses = [ok for _, _, ok in self._pending_losses if ok.device == device]
                if losses:
                    flat = torch.cat([flat, torch.stack(losses).float()])
            host = flat.tolist()
            self.syncs += 1
            n = len(ks)
            for j, k in enumerate(ks):
                out["norm"][k] = host[j]
                out["max"][k] = host[n + j] if want_max else None
                out["carried"][k] = host[2 * n + j] > 0.5
            if losses:
                self._resolve_losses(device, host[3 * n:])
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
                     keep_norms: bool) -> None:
        summed: dict = {}
        fresh: dict = {}
        carried_names = []
        bad = []
        for k, (state, p) in enumerate(states):
            carried = values["carried"][k] and not state.reset_seen
            state.summed = state.since_step + (state.summed if carried else 0)
            name = _display(state.name)
            if carried:
                carried_names.append(name)
            summed.setdefault(state.summed, []).append(name)
            fresh[state.since_step] = fresh.get(state.since_step, 0) + 1
            if not math.isfinite(values["norm"][k]):
                bad.append(name)
            state.since_step = 0
            state.reset_seen = None
        record = {"step": step, "optimizer": type(optimizer).__name__,
                  "location": user_location(), "parameters": len(states),
                  # backward calls since the previous step (the most common count)
                  "backward_calls": max(fresh, key=fresh.get) if fresh else 0,
                  # backward calls summed into .grad since its last reset -> parameters
                  "summed": {str(n): names if len(summed) > 1 else len(names)
                             for n, names in sorted(summed.items())},
                  "carried": carried_names}
        self.steps.append(record)
        if bad:
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

    def finish(self) -> None:
        """Read what is still pending (losses after the last step) and drop device tensors."""
        for device in {ok.device for _, _, ok in self._pending_losses}:
            flags = torch.stack([ok for _, _, ok in self._pending_losses
                                 if ok.device == device]).float().tolist()
            self.syncs += 1
            self._resolve_losses(device, flags)
        for state in self._params.values():
            state.fp_after = state.fp_before = state.index = None
            state.grad_ref = None

    def snapshot(self) -> dict:
        return {"accumulation": list(self.steps), "norm_steps": list(self.norm_steps),
                "grad_norms": {k: list(v) for k, v in self.norms.items()},
                "grad_maxabs": {k: list(v) for k, v in self.maxabs.items()},
                "nonfinite_grads": list(self.nonfinite),
                "nonfinite_losses": list(self.losses_nonfinite)}


def _display(name: tuple) -> str:
    model, qual = name
    return f"{model}.{qual}" if model else qual
