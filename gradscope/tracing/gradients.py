"""Gradient accumulation and gradient health, recorded without a host sync inside any hook.

Per parameter, no hook at all: torch's two per-tensor hooks cost little to call, but two Python
calls per parameter per backward were most of gradscope's cost on a fast training step. Instead
one pass over the watched parameters runs just before each backward call and one just after it
(from the patched ``torch.autograd.backward``):
- before: ``.grad`` as the user left it. ``None`` or another tensor object than after the
  previous accumulation means it was reset (``zero_grad(set_to_none=True)``, ``p.grad = None``).
  The same object is fingerprinted: a few fixed elements are copied on the device; zeros at the
  next step mean it was zeroed in place (``zero_grad(set_to_none=False)``, ``.data.zero_()``,
  which no version counter reveals). Before the first backward after a step, the same object
  with the version counter it had after that step was not touched at all: unless those
  elements are zero, the old gradient is carried into this step (a forgotten ``zero_grad``).
- after: a ``.grad`` that is a new object or has a new version got this backward's
  contribution (the count per step: gradient accumulation).

At each optimizer step (global step post-hook) the gradient norms and max-abs values of the
stepped parameters are computed on their device with fused ``_foreach_norm`` kernels, and
everything pending is read back in **one** transfer per device: at most one synchronisation per
optimizer step, by design. Nothing here draws random numbers or keeps user tensors alive: the
recorder holds weak references to parameters and gradients, and the fingerprints are a few
elements each.
"""
from __future__ import annotations

import math
import weakref
from math import isfinite
from itertools import repeat
from operator import attrgetter, call, is_, itemgetter
from typing import Any, Optional

import torch

from .gradnorms import (  # noqa: F401 - imported from here too
    norm_vector, norms_and_max_abs, read_per_device)
from .uniform import GRAD, UniformSteps, all_none, none_missing, uniform_record
from .handles import HandleGroup, ours
from .locations import user_location

FINGERPRINT = 4           # elements compared per parameter
MAX_NORM_STEPS = 1000     # per-step norms kept; beyond that every other one is dropped
DENSE_NORMS = 8           # norms (and non-finite values) read at every one of the first steps,
SPARSE_NORMS = 8          # then at every 8th step: on CPU the read costs ~1.2 us per parameter
SPARSE_MAXABS = 32        # max-abs: every step of the first ones, then every 32nd


_CUDA: list = []  # torch.cuda.is_available(), asked once


def _trains_nothing(trainable: int, received: int, assigned: int) -> bool:
    """A step past the kept records that dead training counts: trainable parameters, and
    none received a gradient from backward or had one written by other code."""
    return bool(trainable) and not received and not assigned


def stream_capturing() -> bool:
    """Is a CUDA graph being captured on the current stream? Then nothing may synchronise (the
    capture would be invalidated), and replays of the graph run no Python hooks at all."""
    if not _CUDA:
        _CUDA.append(torch.cuda.is_available())
    return _CUDA[0] and torch.cuda.is_current_stream_capturing()


def _fingerprint_index(numel: int, device: torch.device) -> torch.Tensor:
    """Positions 0, n/3, 2n/3 and n-1, made on the device: ``torch.tensor(list, device=cuda)``
    would be a blocking host-to-device copy, one per parameter, inside the backward hooks."""
    index = torch.arange(FINGERPRINT, dtype=torch.long, device=device).mul_(numel // 3)
    index[-1] = max(numel - 1, 0)  # a scalar fill: a kernel argument, no copy
    return index


class _ParamState:
    __slots__ = ("ref", "name", "display", "since_step", "summed", "last_grad", "version",
                 "untouched", "fps", "reset_at", "index", "norms", "maxes")

    def __init__(self, param: torch.Tensor, name: tuple) -> None:
        self.ref = weakref.ref(param)
        self.name = name                 # (model, qualified name)
        self.display = _display(name)    # the name in the report, made once
        self.since_step = 0              # backward contributions since the last optimizer step
        self.summed = 0                  # contributions in .grad since its last reset
        self.last_grad: Any = None       # weak ref to .grad after the last accumulation
        self.version: Optional[int] = None  # its version counter after the last step
        self.untouched = False           # .grad at the first backward after the step: as left
        self.fps: list = []              # (fingerprint, since_step) before each backward
        self.reset_at: Optional[int] = None  # since_step when .grad was last replaced/cleared
        self.index: Optional[torch.Tensor] = None
        self.norms: Optional[list] = None  # its series in GradientRecorder.norms / .maxabs
        self.maxes: Optional[list] = None


def uninitialized(p: torch.Tensor) -> bool:
    """A lazy module's parameter not materialised yet. (The mixin, not UninitializedParameter:
    Parameter's metaclass makes that isinstance slow; a plain Parameter, the usual, is told by
    its class alone.)"""
    return p.__class__ is not _Parameter and \
        isinstance(p, torch.nn.parameter.UninitializedTensorMixin)


_Parameter = torch.nn.Parameter
_REQUIRES_GRAD = attrgetter("requires_grad")
_SECOND = itemgetter(1)
_DEVICE = attrgetter("device")
_REF = attrgetter("ref")


class _Gone:
    pass


_GONE = weakref.ref(_Gone())  # a dead reference: the .grad an idle step's zero_grad let go
_ALL_NONE = ()  # the snapshot before a backward when no watched parameter had a .grad

MAX_FINGERPRINTS = 64
MAX_STEP_RECORDS = 10_000  # accumulation records kept; later steps still feed the checks' counts  # per parameter and step: backward calls looked at before giving up


class GradientRecorder:
    """Accumulation per step, gradient norms per step, non-finite gradients and losses."""

    def __init__(self, sampled: bool = True) -> None:
        # Sampled norms are watch's (left on in training); a diagnostic run (gradscope trace)
        # reads every step's, so its report names the exact step a gradient went non-finite.
        self.sampled = sampled
        self._params: dict = {}          # id(param) -> _ParamState
        self._watched: list = []         # the same states, in order, for the passes
        self._pids: list = []            # ids of their parameters, in the same order
        self._uniform = UniformSteps()   # the counts all share while the loop is uniform
        # (step, location, names, new, dead-training counts) of the last step if it was uniform
        self.last_uniform: Optional[tuple] = None
        self._before: Optional[list] = None  # (.grad ref, version) per state, during a backward
        self._backwards = 0              # backward calls seen since the last optimizer step
        self._fingerprinted = False      # a fingerprint was taken since the last step
        self._step_params: dict = {}     # id(optimizer) -> (groups key, ref, pairs..., names)
        self._before_params: Optional[list] = None  # the watched parameters, during a backward
        self._all_seen = False           # every id in _pids is in seen
        self.seen: set = set()           # ids of parameters that ever received a gradient
        self.steps: list = []            # plain-data record per optimizer step
        self.norm_steps: list = []       # step indices whose norms are kept
        self.norms: dict = {}            # (model, name) -> [norm per kept step]
        self.maxabs: dict = {}
        self.nonfinite: list = []        # {"step", "params": [...]}
        self.read_step = 0               # the last step whose norms were read
        self.losses_nonfinite: list = []  # {"backward", "location"}
        self._norm_stride = 1            # reads per kept one, once MAX_NORM_STEPS was reached
        self._unkept_reads = 0           # reads since the last kept one
        self._pending_losses: list = []  # (backward index, location, device bool tensor)
        self.syncs = 0                   # host reads performed (tests check: <= 1 per step)
        self.captured_steps = 0          # steps inside CUDA graph capture: not recorded
        self.dead_steps_past_records = 0  # steps after MAX_STEP_RECORDS that updated nothing
        self.errors: list = []           # failures inside our hooks, for the report's notes

    # -- registration --------------------------------------------------------------------------
    def watch(self, param: torch.Tensor, name: tuple, handles: HandleGroup) -> None:
        """Watch ``param`` from the next backward on (``handles``: kept for callers; no hook is
        installed, the passes around each backward do the work)."""
        if param.numel() == 0 or param.device.type == "meta":
            # nothing to measure (index/foreach kernels reject empty tensors; meta tensors,
            # used for shape runs, have no values to read)
            return
        if id(param) in self._params and self._params[id(param)].ref() is param:
            state = self._params[id(param)]
            if state.name[0] is None and name[0] is not None:
                self._rename(state, name)  # watched as an optimizer's, then its model ran
            return
        self._uniform.write_back(self._watched)
        state = self._params[id(param)] = _ParamState(param, name)
        self._watched.append(state)
        self._pids.append(id(param))
        self._all_seen = False
        self._step_params.clear()

    def watch_named(self, label: str, named: list, handles: HandleGroup) -> int:
        """:meth:`watch` each ``(name, parameter)`` of model ``label`` that requires grad and
        is materialised; one already watched under a model's name costs one dict read.
        Returns how many were left waiting: frozen, or lazy (not materialised yet)."""
        states = self._params
        waiting = 0
        for name, p in named:
            state = states.get(id(p))
            if state is not None and state.name[0] is not None and state.ref() is p:
                continue
            if p.requires_grad and not uninitialized(p):
                self.watch(p, (label, name), handles)
            else:
                waiting += 1
        return waiting

    def _rename(self, state: _ParamState, name: tuple) -> None:
        old, new = _display(state.name), _display(name)
        state.name, state.display = name, new
        self._step_params.clear()  # their cached display names
        for series in (self.norms, self.maxabs):
            if old in series:
                series[new] = series.pop(old) + series.pop(new, [])
        for other in self._watched:  # their series may be new lists now
            other.norms = other.maxes = None
        for record in self.steps:
            record["carried"] = [new if n == old else n for n in record.get("carried", [])]

    def watching(self, param: torch.Tensor) -> bool:
        state = self._params.get(id(param))
        return state is not None and state.ref() is param

    # -- the passes around each backward ------------------------------------------------------
    @ours
    def before_backward(self) -> None:
        """Just before a backward call: was each .grad reset since its last accumulation?

        A cleared or replaced .grad (set_to_none, ``p.grad = None``, a new tensor) is seen at
        once. A gradient zeroed in place (``zero_grad(set_to_none=False)``, ``.data.zero_()``)
        is only visible in its values, so a few elements are copied on the device and compared
        at the next optimizer step (no host read here)."""
        if stream_capturing():
            self._before = None
            return
        params = self._before_params = self._params_now()  # held until after_backward only
        grads = list(map(GRAD, params))  # one C loop over the parameters
        uniform = self._uniform
        if uniform.on:
            if uniform.before(grads):
                self._before = _ALL_NONE
                return
            uniform.write_back(self._watched)
        if all_none(grads):  # all cleared (set_to_none): the usual case
            for state in self._watched:
                state.reset_at = state.since_step
            self._before = _ALL_NONE
            return
        snapshot = []
        for state, grad in zip(self._watched, grads):
            if grad is None:
                snapshot.append(None)
                state.reset_at = state.since_step
                continue
            snapshot.append((weakref.ref(grad), grad._version))
            last = state.last_grad() if state.last_grad is not None else None
            if grad is not last:
                state.reset_at = state.since_step
                continue
            if state.since_step == 0 and not state.fps:  # the first backward after the step
                state.untouched = grad._version == state.version
            if len(state.fps) < MAX_FINGERPRINTS:
                self._fingerprint(state, grad)
        self._before = snapshot

    def _params_now(self) -> list:
        """The watched parameters, in order, through their weak references (one C loop); the
        states of parameters that died (replaced, say) are dropped first."""
        params = list(map(call, map(_REF, self._watched)))
        if any(map(is_, params, repeat(None))):
            self._uniform.write_back(self._watched)
            self._watched = [s for s, p in zip(self._watched, params) if p is not None]
            self._pids = [pid for pid, p in zip(self._pids, params) if p is not None]
            self._all_seen = False
            params = [p for p in params if p is not None]
            self._step_params.clear()
            self._before = None  # this backward's snapshot no longer lines up
        return params

    def _fingerprint(self, state: _ParamState, grad: torch.Tensor) -> None:
        if state.index is None or state.index.device != grad.device:
            state.index = _fingerprint_index(grad.numel(), grad.device)
        with torch.no_grad():
            fp = grad.detach().reshape(-1).index_select(0, state.index)  # a new tensor
        state.fps.append((fp, state.since_step))
        self._fingerprinted = True

    @ours
    def after_backward(self) -> None:
        """Just after a backward call: a .grad that is a new object, or has a new version,
        received this backward's contribution."""
        snapshot, self._before = self._before, None
        params, self._before_params = self._before_params, None
        if snapshot is None or (snapshot is not _ALL_NONE and len(snapshot) != len(self._watched)):
            return  # not seen starting (CUDA graph capture), or parameters added meanwhile
        self._backwards += 1
        watched = len(self._watched)
        if params is None or len(params) != watched:
            # parameters added or dropped during the backward: look again
            params = self._params_now()
            if len(params) != watched:
                return  # a parameter died meanwhile: the snapshot no longer lines up
        grads = list(map(GRAD, params))
        seen = self.seen
        uniform = self._uniform
        if uniform.on:
            if snapshot is _ALL_NONE and uniform.after(grads):
                if not self._all_seen:  # else all of them are in seen already
                    seen.update(self._pids)
                    self._all_seen = True
                return
            uniform.write_back(self._watched)
        if snapshot is _ALL_NONE:  # every .grad that exists now is this backward's
            for state, param, grad in zip(self._watched, params, grads):
                if grad is not None:
                    state.since_step += 1
                    seen.add(id(param))
                    state.last_grad = weakref.ref(grad)
            return
        for state, param, grad, before in zip(self._watched, params, grads, snapshot):
            if grad is None:
                continue
            if before is None or before[0]() is not grad or before[1] != grad._version:
                state.since_step += 1
                seen.add(id(param))
                state.last_grad = weakref.ref(grad)

    def resync_after_idle(self, backwards: int) -> None:
        """After idle steps (``steady``): the uniform counts as the passes they skipped would
        have left them, ``backwards`` backward calls into the current step."""
        uniform = self._uniform
        if not uniform.on:
            return
        uniform.since, self._backwards = backwards, backwards
        uniform.reset = 0 if backwards else None
        self._before = self._before_params = None
        grads = list(map(GRAD, self._params_now()))
        if not uniform.on:  # a parameter died meanwhile: the general path has it
            return
        uniform.refs = [_GONE if g is None else weakref.ref(g) for g in grads]
        uniform.versions = [None if g is None else g._version for g in grads]
        if backwards and not none_missing(grads):
            # that backward did not reach every parameter (one frozen meanwhile, say): the
            # general path takes over, as after() would have handed it over
            uniform.write_back(self._watched)
            for state, grad in zip(self._watched, grads):
                if grad is None:
                    state.since_step, state.reset_at = 0, 0

    def note_loss(self, roots: Any, index: int, location: Optional[str] = None) -> None:
        """Queue a finiteness check of a backward root (read at the next sync).

        A one-element loss is kept as it is (a view, no kernel) and checked with all the
        others at the read; a larger root, or one that would keep a larger tensor alive, is
        reduced now to one value that is finite exactly when the root is."""
        if isinstance(roots, torch.Tensor) and roots.is_floating_point() \
                and not roots.is_meta and not (roots.is_cuda and stream_capturing()):
            if roots.dim() == 0 and not roots._is_view():
                value = roots.detach()  # the usual loss: its own one-element storage
            else:
                with torch.no_grad():
                    value = roots.detach()
                    if value.numel() == 1 and value.untyped_storage().nbytes() <= 64:
                        value = value.reshape(())
                    else:
                        value = torch.where(torch.isfinite(value).all(), 0.0, math.nan)
            self._pending_losses.append((index, location or user_location(), value))
            if len(self._pending_losses) >= 256:  # no optimizer steps to read them with
                self.finish_losses()

    # -- optimizer step ------------------------------------------------------------------------
    def on_step(self, optimizer: Any, step: int, serial: Optional[int] = None,
                location: Optional[str] = None) -> None:
        """Record the step: accumulation per parameter, norms, non-finite values; one sync."""
        if stream_capturing():
            self.captured_steps += 1
            return
        pairs, tensors, others = self._stepped(optimizer)
        self.last_uniform = None
        uniform = self._uniform
        if uniform.on:
            if len(pairs) == len(self._watched) and self._uniform_step(
                    optimizer, step, serial, pairs, tensors, others, location):
                return
            uniform.write_back(self._watched)
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
                elif p.grad is not None and state.version is not None \
                        and p.grad._version != state.version:
                    # p.grad.copy_(...) (Reptile's meta step), or only zero_() by zero_grad
                    # (set_to_none=False): told apart by the norm read below
                    written.add(id(p))
                if p.grad is None:
                    if state.since_step > 0:  # zero_grad() between backward() and step()
                        cleared += 1
                        state.since_step, state.reset_at, state.fps = 0, None, []
                elif p.grad.layout == torch.strided:
                    states.append((state, p))
        if not self._backwards:
            self._unseen_backward(states)
        # Fingerprints to compare, gradients written in place and GradScaler's flag are read at
        # every step they exist (still in the one read).
        want_norms, want_max, keep_norms, found_inf = self._reads(optimizer, step)
        if want_norms or self._fingerprinted or written or found_inf is not None:
            values = self._read_once(states, want_max, found_inf)
            self.read_step = step
        else:
            values = {"norm": [None] * len(states), "max": [None] * len(states),
                      "flags": [()] * len(states), "found_inf": None}
        if values["found_inf"]:
            # GradScaler found Inf/NaN and the fused optimizer skipped this update: like a skipped
            # step of any other optimizer (which is never called), it adds no gradient norms
            # (partly Inf: filtering those out left a tiny total that seemed to explode later).
            keep_norms = False
        self._record_step(optimizer, step, states, values, keep_norms, cleared, location)
        assigned += sum(1 for k, (_, p) in enumerate(states)
                        if id(p) in written and values["norm"][k] not in (0.0, None))
        self._dead_training(step, serial, trainable, received, assigned)
        for state, p in states:  # what the next backward is compared with
            state.version = p.grad._version
            state.untouched = False
        self._backwards = 0
        if len(pairs) == len(self._watched) and len(states) == len(pairs):
            uniform.start()  # the next steps may take the uniform path

    def _reads(self, optimizer: Any, step: int) -> tuple:
        """(norms wanted, max-abs wanted, norms kept, GradScaler's flag) for this step.

        The L2 norm (it also reveals NaN/Inf) is a read of every gradient, a kernel per
        parameter on a CPU: after the first steps it is taken at every SPARSE_NORMS-th step,
        and the max-abs pass (as costly again) at every SPARSE_MAXABS-th."""
        dense = len(self.norm_steps) < DENSE_NORMS  # steps GradScaler skipped do not count
        want_norms = dense or step % SPARSE_NORMS == 0 or not self.sampled
        every = SPARSE_MAXABS if self.sampled else SPARSE_NORMS
        # Kept: every _norm_stride-th read, counted in reads (they fall at multiples of 8, or
        # of 64 while idle: a test on the step's number keeps none once the stride is even).
        # A kept read that GradScaler's skip drops leaves the next one due (_store_step).
        keep = want_norms and self._unkept_reads + 1 >= self._norm_stride
        if want_norms and not keep:
            self._unkept_reads += 1
        return (want_norms, want_norms and (dense or step % every == 0), keep,
                _scaler_found_inf(optimizer))

    def _dead_training(self, step: int, serial: Optional[int], trainable: int, received: int,
                       assigned: int) -> None:
        if len(self.steps) <= MAX_STEP_RECORDS and self.steps[-1]["step"] == step:
            self.steps[-1].update(optimizer_id=serial, trainable=trainable, received=received,
                                  assigned=assigned)
        elif _trains_nothing(trainable, received, assigned):
            self.dead_steps_past_records += 1

    def store_idle_steps(self, first: int, count: int, optimizer: Any, location: Optional[str],
                         names: list, new: int, serial: Optional[int], dead: tuple) -> None:
        """The records of ``count`` idle steps from step ``first`` on (``steady``): what
        :meth:`_uniform_step` stores for a step without a read (``uniform_record``, then
        ``_store_step`` and ``_dead_training``), in one go."""
        base = uniform_record(first, optimizer, location, names, new, [])
        trainable, received, assigned = dead
        base.update(optimizer_id=serial, trainable=trainable, received=received,
                    assigned=assigned)
        steps = self.steps
        kept = max(0, min(count, MAX_STEP_RECORDS - len(steps)))
        summed = base["summed"]
        steps += [{**base, "step": s, "summed": dict(summed), "carried": []}
                  for s in range(first, first + kept)]
        rest = count - kept
        if rest and len(steps) == MAX_STEP_RECORDS:  # the mark where the records end
            step = first + kept
            self._store_step(uniform_record(step, optimizer, location, names, new, []),
                             optimizer, step, [], {"found_inf": None}, False, [])
        if rest and _trains_nothing(trainable, received, assigned):
            self.dead_steps_past_records += rest

    def _uniform_step(self, optimizer: Any, step: int, serial: Optional[int], pairs: list,
                      tensors: list, others: list, location: Optional[str] = None) -> bool:
        """Record a step of the uniform loop (see ``uniform``); False if it is not one."""
        uniform = self._uniform
        grads = list(map(GRAD, map(_SECOND, pairs)))
        if not uniform.step_ready(grads, self._backwards):
            return False
        want_norms, want_max, keep_norms, found_inf = self._reads(optimizer, step)
        if want_norms or found_inf is not None:
            values = self._read_once(pairs, want_max, found_inf, grads)
            self.read_step = step
        else:
            values = {"norm": [None] * len(pairs), "max": [None] * len(pairs),
                      "found_inf": None}
        if values["found_inf"]:
            keep_norms = False
        new = uniform.since - uniform.reset
        names, in_watch_order = self._step_params[id(optimizer)][3]  # (made by _stepped)
        norms = values["norm"]
        record = uniform_record(step, optimizer, location or user_location(), names, new, norms)
        bad = [] if not norms or norms[0] is None else [n for n, v in zip(names, norms)
                                                        if not isfinite(v)]
        self._store_step(record, optimizer, step, pairs, values, keep_norms, bad)
        # every watched one received its gradient from backward; the others, if any, had theirs
        # written by other code
        # (a watched parameter holding this step's gradient from backward requires grad)
        dead = (len(pairs) + sum(map(_REQUIRES_GRAD, others)), len(pairs),
                sum(1 for p in others if p.grad is not None))
        self._dead_training(step, serial, *dead)
        # what idle steps (steady.py) write for each step they skip
        self.last_uniform = (step, record["location"], names, new, dead)
        uniform.stepped(new, grads if in_watch_order else list(map(GRAD, self._params_now())))
        self._backwards = 0
        return True

    def _stepped(self, optimizer: Any) -> tuple:
        """``[(state, param)]`` of the watched tensors in ``optimizer.param_groups``, all its
        tensors, and those not watched; looked up again only when its groups (or the watched
        set) change."""
        key = [(id(g["params"]), len(g["params"])) for g in optimizer.param_groups]
        cached = self._step_params.get(id(optimizer))
        if cached is None or cached[0] != key or cached[1]() is not optimizer:
            found, tensors, others = [], [], []
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if not isinstance(p, torch.Tensor):
                        continue
                    tensors.append(p)
                    state = self._params.get(id(p))
                    if state is not None and state.ref() is p:
                        found.append((state, p))
                    else:
                        others.append(p)
            # The optimizer holds these tensors anyway; finish() lets them go with it. For the
            # uniform path: display names made once, and whether the pairs are the watched
            # states in their order (then one list of gradients serves both).
            names = [state.display for state, _ in found]
            in_watch_order = len(found) == len(self._watched) \
                and all(map(is_, (state for state, _ in found), self._watched))
            cached = self._step_params[id(optimizer)] = (key, weakref.ref(optimizer),
                                                         (found, tensors, others),
                                                         (names, in_watch_order))
        return cached[2]

    def _unseen_backward(self, states: list) -> None:
        """No backward call passed through us since the last step (a reference to
        ``torch.autograd.backward`` taken before gradscope started, say), yet gradients are
        here: a .grad that changed since the last step counts as one contribution."""
        for state, p in states:
            last = state.last_grad() if state.last_grad is not None else None
            if p.grad is not last or p.grad._version != state.version:
                state.since_step += 1
                self.seen.add(id(p))
                state.last_grad = weakref.ref(p.grad)

    def _read_once(self, states: list, want_max: bool,
                   found_inf: Optional[torch.Tensor] = None,
                   all_grads: Optional[list] = None) -> dict:
        """Everything this step needs from the devices, in one transfer per device.

        ``found_inf`` is GradScaler's flag on a fused optimizer: read with the gradients of its
        device, so that a skipped step costs no second synchronisation. (This runs after the
        step: a fused kernel has unscaled ``.grad`` in place by then, so norms are true ones.)
        ``all_grads``: the ``.grad`` of each of ``states``, when the caller has them already."""
        if all_grads is None:
            all_grads = list(map(GRAD, map(_SECOND, states)))
        by_device: dict = {}
        devices = list(map(_DEVICE, all_grads))
        if devices.count(devices[0]) == len(devices) if devices else False:
            by_device[devices[0]] = range(len(states))  # the usual: all on one device
        else:
            for k, device in enumerate(devices):
                by_device.setdefault(device, []).append(k)
        out = {"norm": [math.nan] * len(states), "max": [math.nan] * len(states),
               "flags": [[] for _ in states], "found_inf": None}
        for device, ks in by_device.items():
            scaler_flag = found_inf if found_inf is not None and found_inf.device == device \
                and out["found_inf"] is None else None
            # read under no_grad: no detach needed
            grads = all_grads if len(ks) == len(all_grads) else [all_grads[k] for k in ks]
            with torch.no_grad():
                # float32 already; the max-abs values after the norms
                parts = [norms_and_max_abs(grads) if want_max else norm_vector(grads)]
                layout = [0] * len(ks)  # per parameter: how many fingerprint flags follow
                flags: list = []
                for j, k in enumerate(ks) if self._fingerprinted else ():
                    mine = _fingerprint_flags(states[k][0], device)
                    layout[j] = len(mine)
                    flags.extend(mine)
                losses = [v for _, _, v in self._pending_losses if v.device == device]
                if flags:  # one stack and one cast for all flags, not one per flag
                    parts.append(torch.stack(flags).float())
                if losses:
                    parts.append(_loss_values(losses))
                if scaler_flag is not None:
                    parts.append(scaler_flag.reshape(-1)[:1].float())
                flat = torch.cat(parts)
            host = flat.tolist()
            self.syncs += 1
            if scaler_flag is not None:
                out["found_inf"] = host.pop() > 0.5
            n = len(ks)
            pos = 2 * n if want_max else n
            if n == len(states) and not flags:  # one device, no fingerprints: the usual step
                out["norm"], out["max"] = host[:n], host[n:pos] if want_max else [None] * n
            else:
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
                if not isfinite(next(it)):
                    self.losses_nonfinite.append({"backward": index, "location": location})
            else:
                rest.append((index, location, ok))
        self._pending_losses = rest

    def _record_step(self, optimizer: Any, step: int, states: list, values: dict,
                     keep_norms: bool, cleared: int = 0,
                     location: Optional[str] = None) -> None:
        summed: dict = {}
        fresh: dict = {}
        carried_names = []
        bad = []
        contributed, zeros = cleared, 0
        isfinite = math.isfinite
        for (state, _), norm, flags in zip(states, values["norm"], values["flags"]):
            if flags or state.fps:
                carried, new = _carried(state, flags)
            else:  # no fingerprint: _carried's answer without the call
                carried, new = False, state.since_step - (state.reset_at or 0)
            if new > 0:
                contributed += 1
                if norm == 0.0:  # zeroed in place, or truly zero (dead units); None: not read
                    zeros += 1
            state.summed = new + (state.summed if carried else 0)
            name = state.display
            if carried:
                carried_names.append(name)
            summed.setdefault(state.summed, []).append(name)
            fresh[new] = fresh.get(new, 0) + 1
            if norm is not None and not isfinite(norm):
                bad.append(name)
            state.since_step = 0
            state.reset_at = None
            if state.fps:
                state.fps = []
        self._fingerprinted = False
        record = {"step": step, "optimizer": type(optimizer).__name__,
                  "location": location or user_location(), "parameters": len(states),
                  # backward calls in .grad since the previous step or the last reset, whichever
                  # came later (the most common count over the step's parameters)
                  "backward_calls": max(fresh, key=fresh.get) if fresh else 0,
                  # backward calls summed into .grad since its last reset -> parameters
                  "summed": {str(n): names if len(summed) > 1 else len(names)
                             for n, names in sorted(summed.items())},
                  "carried": carried_names}
        if cleared or zeros:
            # of the parameters that received gradients since the previous step, how many have
            # none (.grad is None) and how many all zeros when this step runs
            record["cleared"], record["zeros"] = cleared, zeros
            record["contributed"] = contributed
        self._store_step(record, optimizer, step, states, values, keep_norms, bad)

    def _store_step(self, record: dict, optimizer: Any, step: int, states: list, values: dict,
                    keep_norms: bool, bad: list) -> None:
        """Keep a step's record, its non-finite gradients and its norms."""
        if values.get("found_inf"):
            record["skipped_by_scaler"] = True
        if len(self.steps) < MAX_STEP_RECORDS:
            self.steps.append(record)
        elif len(self.steps) == MAX_STEP_RECORDS:
            self.steps.append({"step": step, "truncated": True, "optimizer": record["optimizer"],
                               "location": record["location"], "parameters": 0,
                               "backward_calls": 0, "summed": {}, "carried": []})
        if bad and not self._skipped_by_scaler(optimizer, values["found_inf"]):
            self.nonfinite.append({"step": step, "params": bad})
        if keep_norms:
            self._unkept_reads = 0
            self.norm_steps.append(step)
            for (state, _), norm, top in zip(states, values["norm"], values["max"]):
                if state.norms is None:  # its two series, looked up once
                    state.norms = self.norms.setdefault(state.display, [])
                    state.maxes = self.maxabs.setdefault(state.display, [])
                state.norms.append(norm)
                state.maxes.append(top)
            if len(self.norm_steps) >= MAX_NORM_STEPS:  # keep memory flat on long runs
                self.norm_steps = self.norm_steps[::2]
                for series in (*self.norms.values(), *self.maxabs.values()):
                    del series[1::2]  # in place: the states keep pointing at them
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
            flags = _loss_values([v for _, _, v in self._pending_losses
                             if v.device == device]).tolist()
            self.syncs += 1
            self._resolve_losses(device, flags)

    def finish(self, step: int = 0) -> None:
        """Read what is still pending (losses after the last step, and the last step's
        gradients when its norms were sampled out) and drop device tensors."""
        self.finish_losses()
        self._last_gradients(step)
        for state in self._params.values():
            state.index = None
            state.fps = []
            state.last_grad = None
        self._uniform.write_back(self._watched)
        self._step_params.clear()
        self._before = self._before_params = None

    def _last_gradients(self, step: int) -> None:
        """Sampled norms skip most steps: a NaN gradient in the last ones would go unnamed.
        The gradients the run left are read once at the end (for the last optimizer step)."""
        if not self.sampled or step <= self.read_step or stream_capturing() \
                or (self.nonfinite and self.nonfinite[-1]["step"] >= step):
            return
        pairs = [(state, g) for state, g in zip(self._watched, map(GRAD, self._params_now()))
                 if g is not None and g.layout == torch.strided and not g.is_meta]
        if not pairs:
            return
        norms = self._read_once([(s, None) for s, _ in pairs], False, None,
                                [g for _, g in pairs])["norm"]
        bad = [state.display for (state, _), v in zip(pairs, norms) if not isfinite(v)]
        if bad:
            self.nonfinite.append({"step": step, "params": bad})

    def snapshot(self) -> dict:
        return {"accumulation": list(self.steps), "norm_steps": list(self.norm_steps),
                "grad_norms": {k: list(v) for k, v in self.norms.items()},
                "grad_maxabs": {k: list(v) for k, v in self.maxabs.items()},
                "nonfinite_grads": list(self.nonfinite),
                "nonfinite_losses": list(self.losses_nonfinite),
                "dead_steps_past_records": self.dead_steps_past_records}


def _loss_values(values: list) -> torch.Tensor:
    """One float32 vector whose entries are finite exactly where ``values`` are: the values
    themselves (one kernel; float16 and bfloat16 widen exactly), or, with a float64 among
    them (which could overflow float32), 1.0 and NaN from an isfinite test."""
    if any(v.dtype == torch.float64 for v in values):
        return torch.where(torch.isfinite(torch.stack([v.double() for v in values])), 1.0,
                           math.nan).float()
    return torch.stack([v if v.dtype == torch.float32 else v.float() for v in values])


def _fingerprint_flags(state: _ParamState, device: Any) -> list:
    """Device booleans for one parameter: one "all zero" flag per fingerprint taken before a
    backward (none if a fingerprint lives on another device)."""
    fps = [(fp, c) for fp, c in state.fps if fp.device == device]
    if len(fps) != len(state.fps):
        return []
    return [(fp == 0).all() for fp, _ in fps]


def _carried(state: _ParamState, flags: list) -> tuple:
    """(old gradient carried into this step?, backward calls since the step or the last reset)."""
    latest = state.reset_at                  # cleared or replaced before that backward
    for (_, count), zero in zip(state.fps, flags):
        if zero:                             # zeroed in place before that backward
            latest = count if latest is None else max(latest, count)
    if latest is not None:
        return False, state.since_step - latest
    if flags and state.untouched:
        return True, state.since_step       # untouched since the step and not zero: carried
    return False, state.since_step           # first step, or changed in place (scaled, say)


def _scaler_found_inf(optimizer: Any) -> Optional[torch.Tensor]:
    """GradScaler's Inf/NaN flag when it steps a fused optimizer (which is always called and
    skips the update itself), else None."""
    found_inf = getattr(optimizer, "found_inf", None)
    return found_inf if isinstance(found_inf, torch.Tensor) and found_inf.numel() else None


def _display(name: tuple) -> str:
    model, qual = name
    return f"{model}.{qual}" if model else qual
