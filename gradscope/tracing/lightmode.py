"""Light forwards: a watch session's steady state, without a Python hook on every module call.

The two global forward hooks fire for every module call, about 2.5 us each with torch's own
share; on a 3 ms step of a 20-layer MLP that alone is 3.5%. After the session's first steps
(and once the drawn graph is captured) the capture swaps them for one pre- and one post-hook on
each module it has seen called at top level (the models, or the wrappers around them). A
forward whose inputs (shapes, dtypes, devices, small scalar arguments) and modes (training,
grad, autocast; the training flags of dropout and batch-norm layers) match those of a forward
recorded in full is counted by replaying that recording: each module's call count and
batch-norm statistics grow as they did then (added up when the records are read: the report,
or the next full recording). A forward that matches none is recorded in full,
with the global hooks back for its duration; so is every forward of the periodic full steps
(see ``Capture``) and of the step after a parameter first received a gradient (``record_next``:
a module no hook saw ran, a model first called after the warm-up or a layer a branch of the
forward takes from step N on). Each such recording becomes the pattern its kind replays.

What a replay assumes: the same inputs and modes call the same modules. A forward whose module
calls depend on tensor values (routing, early exit) is counted as the last full recording of
its kind says, until the next full step records it again. A module first called while
forwards are replayed is counted from its first call: each submodule of a model that no forward
has called yet has a pre-hook of its own (``_watch_uncalled``), which costs nothing until it
runs. A second model first called then is counted from its second call when its parameters get
gradients or its optimizer takes its first step (``Capture._trains_another``), else from the
next periodic full step. Patterns are made
only while no other thread has run modules (another thread's calls would be in the
difference); with such threads every forward is recorded in full.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Optional

import torch
from torch import nn

from .handles import CopySafe, hook_of_ours
from .abandoned import call_frame
from .modules import ModuleTracker
from .failures import sequence_nr
from .patches import _inside_backward

_SCALARS = (bool, int, float, str, type(None))
_NO_FORWARD = nn.Module.forward  # (a container's: ModuleList, ModuleDict)
LIGHT_AFTER = 8   # optimizer steps recorded in full first (as many as read max-abs densely)
FULL_EVERY = 64   # then every 64th step is recorded in full again (a multiple of steady.WINDOW:
#                   that step is one an idle run ends with, recorded in full anyway)


class LightForwards:
    """Per-root hooks and the recorded forwards they replay."""

    def __init__(self, tracker: ModuleTracker) -> None:
        self.tracker = tracker
        self.active = False
        self.full_step = False         # a periodic full step: the global hooks are in
        self.full_ended = -1           # the optimizer step that ended the last one
        self.full_next = False         # one begun inside a step: it ends with the next step
        self._record_after = False     # record_next asked inside a replayed forward
        self._record_at_step = False   # record_next asked by a module called on its own
        self._window_roots = 0         # forwards at top level when a full recording began
        self._handles: list = []
        self._uncalled: dict = {}      # id(module) -> handle of its _first_call hook
        self._patterns: dict = {}      # (id(root), signature) -> _Pattern
        self._modes: dict = {}         # id(root) -> its dropout and batch-norm modules
        self._full: Optional[tuple] = None  # (root, key, counts before) of a full forward
        self._root: Optional[Any] = None     # the root module of the light forward running
        self._pattern: Optional[_Pattern] = None
        self._replayed: list = []      # patterns with replays not yet added to the records
        self.steady: Any = None        # the capture's SteadySteps (idle steps), if any
        self._idle_root: Optional[Any] = None  # the root whose idle forward is running
        self._idle_pattern: Optional[_Pattern] = None
        self._hooks_out = False        # global hooks to take out at the next step (_abandoned)
        self._depth = 0                # calls of the running model inside its own forward
        self.steps_after: list = []   # (step, eligible) of steps inside a forward (on_step)
        tracker.on_abandoned = self._abandoned

    # -- switching -----------------------------------------------------------------------------
    def start(self) -> None:
        """Global hooks out, a hook pair on every root seen so far."""
        if self.active:
            return
        self.active, self.full_step, self.full_next = True, False, False
        for ref in list(self.tracker.root_modules.values()):
            root = ref()
            if root is not None:
                self._handles.append(root.register_forward_pre_hook(CopySafe(self._pre),
                                                                    with_kwargs=True))
                self._handles.append(root.register_forward_hook(
                    CopySafe(self._post), with_kwargs=True, always_call=True))
                self._watch_uncalled(root)
        self.tracker.forward_hooks(False)

    def _watch_uncalled(self, root: nn.Module) -> None:
        """A pre-hook on each submodule of ``root``'s model that no forward has called yet: a
        replay would not count it (a branch taken from step N on, an eval-only head, a frozen
        or parameter-free layer, which no first gradient tells of). Never called, these hooks
        cost nothing. Run inside a replayed forward (or called on its own), one counts the
        call and has the next forwards recorded in full; the first call the global hooks
        record takes it out. Not in a compiled model, where a hook added or taken out would
        make torch.compile recompile. (``CopySafe``: a copy of the module made meanwhile gets
        an inert hook.)"""
        tracker = self.tracker
        entry = tracker.entry_of(root)
        model = tracker.models.get(entry[1]) if entry is not None else None
        if model is None or entry[1] in tracker.compiled:
            return
        called = {key for key, rec in tracker.records.items() if rec.calls}
        for name, sub in tracker.listing(model):
            # (by the name the module was recorded under: a layer shared with a model named
            # first is that model's; hooked once, when two roots are the same model's; not
            # a container without a forward of its own, ModuleList or ModuleDict, which is
            # never called: a module holding one stays free of our hooks for torch.jit.script)
            known = tracker.entry_of(sub)
            if name and known is not None and (known[1], known[2]) not in called \
                    and id(sub) not in self._uncalled \
                    and type(sub).forward is not _NO_FORWARD:
                self._uncalled[id(sub)] = sub.register_forward_pre_hook(
                    CopySafe(self._first_call))

    @hook_of_ours
    def _first_call(self, module: nn.Module, args: tuple) -> None:
        """A module no forward had called runs, inside a replayed (or idle) forward or on its
        own from the loop: counted here (and a batch norm's batch statistics), its output
        shape and later calls by the full recording that follows."""
        tracker = self.tracker
        if tracker._forward_handles:  # recorded in full: the global hooks count it from now on
            handle = self._uncalled.pop(id(module), None)
            if handle is not None:
                handle.remove()  # (torch runs the hooks from a copy of the dict)
            return
        entry = tracker.entry_of(module)
        if entry is None or threading.get_ident() != tracker._owner:
            return
        replayed = self._root is not None or self._idle_root is not None
        if not replayed and tracker.in_forward():
            return  # inside a forward no hook of ours follows (another model's)
        tracker.count_call(entry[1], entry[2], module)
        tracker.note_batch(module, entry, args)  # (as the full pre-hook does)
        if not replayed:
            # called on its own from your loop (``model.head(x)`` under no_grad): the
            # forwards after the next step are recorded in full, which make it a model of its
            # own (then replayed as one). Not now: the global hooks put in while this call
            # runs would see its end, and its submodules' calls, without its start.
            self._record_at_step = True
            return
        self._record_after = True  # (record_next once the replayed forward returns)
        if self._idle_root is not None:
            self.steady.wake()  # the step differs from the recorded one

    def stop(self) -> None:
        """Back to recording every module call (the session ends, or a full step starts)."""
        if not self.active:
            return
        self.active = False
        self.flush()
        for handle in (*self._handles, *self._uncalled.values()):
            handle.remove()
        self._handles = []
        self._uncalled = {}
        self._forget_forward()
        self.tracker.light_entry = None
        self.tracker.forward_hooks(True)

    def on_step(self, step: int, eligible: bool) -> None:
        """After each optimizer step: go light after the warm-up; every FULL_EVERY-th step
        is recorded in full (new models are found then, and hooked when it ends). A step
        inside a forward (an inner loop, a critic trained in the forward) is taken up after
        it, at the next backward or step outside one: switching hooks now would take out the
        post hooks of the calls running, or put the global hooks in halfway through (the rest
        of the forward would look like calls of its parts from outside)."""
        if self.tracker.in_forward():
            self.steps_after.append((step, eligible))
            if len(self.steps_after) > FULL_EVERY:  # (a program that only steps inside its
                del self.steps_after[0]            # forwards: it stays on the general path)
            return
        self.take_up_steps()
        self._on_step(step, eligible)

    def take_up_steps(self) -> None:
        """The optimizer steps that ran inside a forward, now that none runs."""
        while self.steps_after:
            self._on_step(*self.steps_after.pop(0))

    def _on_step(self, step: int, eligible: bool) -> None:
        if self._hooks_out:
            self._hooks_out = False
            if self.active and not self.full_step and self._full is None:
                self.tracker.forward_hooks(False)
        if self._record_at_step:  # (a module first called on its own, see _first_call)
            self._record_at_step = False
            self.record_next()
        if not self.active:
            if eligible and step >= LIGHT_AFTER:
                self.start()
        elif self.full_step and self.full_next:
            self.full_next = False  # begun inside this step: the next one is recorded in full
        elif self.full_step and self.tracker.root_calls == self._window_roots:
            pass  # no forward yet (two optimizers stepped one after the other): stays open
        elif self.full_step:
            self.stop()
            self.start()  # hooks the roots that step found, if any
            self.full_ended = step
            self.before_step(step)  # (a window that ended just before a periodic one)
        else:
            self.before_step(step)

    def record_next(self) -> None:
        """Inside an optimizer step: the forwards from here to the end of the next one are
        recorded in full. (Asked during a replayed forward, a backward inside it: from the end
        of that forward, whose calls no hook sees.)"""
        if not self.active or self.full_step:
            return
        if self._root is not None or self._idle_root is not None:
            self._record_after = True
            return
        self.full_next = True
        self._open_window()

    def before_step(self, step: int) -> None:
        """Optimizer step ``step + 1`` comes next: when it is a FULL_EVERY-th, its forwards are
        recorded in full. (Also told by an idle run that ends there: a multiple of the idle
        window, whose step is recorded in full anyway, reading the gradient norms.)"""
        if self.active and not self.full_step and (step + 1) % FULL_EVERY == 0:
            self._open_window()

    def _open_window(self) -> None:
        """Global hooks in: forwards are recorded in full until ``on_step`` ends it."""
        self.full_step = True
        self._window_roots = self.tracker.root_calls
        self.tracker.forward_hooks(True)

    # -- the two hooks -------------------------------------------------------------------------
    @hook_of_ours
    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tracker = self.tracker
        if not self.active or tracker.paused:
            return
        if tracker.in_forward() and not tracker.drop_abandoned():
            if self._running(module):
                self._depth += 1  # the model calls itself: part of the forward running
            elif self.full_step and self._full is None:
                self._refresh(module, args, kwargs)
            return  # nested in another model's forward (its recording counts this one)
        try:
            signature = self._signature(module, args, kwargs)
        except Exception:  # noqa: BLE001 - an input we cannot describe: record it in full
            signature = None
        steady = self.steady
        if steady is not None and steady.idle:
            hit = None if signature is None or self._carries_history(args, kwargs) \
                else steady.entry(("f", id(module), signature))
            if hit is not None:  # the recorded step's forward: replayed as it was
                self._idle_root, (self._idle_pattern, label) = module, hit[1]
                tracker.light_entry = (label, "")  # a forward runs (see in_forward)
                tracker.note_root_frame(sys._getframe(1))
                return
            steady.wake()
        entry = tracker.entry_of(module)
        key = (id(module), signature)
        pattern = self._patterns.get(key) if signature is not None else None
        if entry is None or pattern is None or tracker._stale:
            self.flush()
            self._full = (module, key if signature is not None else None,
                          _counts(tracker.records), tracker.unwound)
            tracker.forward_hooks(True)
            tracker._pre_hook(module, args)  # its own global pre-hook was not in yet
            if steady is not None:
                steady.note(("F",))  # recorded in full: no step with it goes idle
            return
        self._root, self._pattern = module, pattern
        tracker.light_entry = (entry[1], "")
        tracker.note_root_frame(sys._getframe(1))
        tracker.root_call(module, entry, args)
        if steady is not None:
            steady.note(("f", id(module), signature), (pattern, entry[1]))

    def _refresh(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward of a full step, which the global hooks record (its own pre-hook ran
        first): its recording becomes the pattern of its kind, so that calls that began since
        the last one (a layer a branch of your forward uses from step N on) are replayed too."""
        stack = self.tracker._stacks.get(threading.get_ident())
        if not stack or len(stack) != 1 or stack[0][0] is not module:
            return  # nested in another model's forward
        try:
            signature = self._signature(module, args, kwargs)
        except Exception:  # noqa: BLE001 - an input we cannot describe: no pattern
            return
        self.flush()
        # (the module's own call is counted when it returns: not in the counts yet)
        self._full = (module, (id(module), signature), _counts(self.tracker.records),
                      self.tracker.unwound)

    def _carries_history(self, args: tuple, kwargs: dict) -> bool:
        """Does an input hold autograd history from before the last backward (a state not
        detached, say)? The keep-alive watch looks at such a forward: not idle then."""
        seqs = self.steady.cap.backward_seqs
        if not seqs:
            return False
        last = seqs[-1]

        def older(value: Any) -> bool:
            fn = value.grad_fn if isinstance(value, torch.Tensor) else None
            return fn is not None and (sequence_nr(fn) or 0) < last

        for value in (*args, *kwargs.values()) if kwargs else args:
            if isinstance(value, (list, tuple, dict)):  # (containers one level in)
                if any(map(older, value.values() if isinstance(value, dict) else value)):
                    return True
            elif older(value):
                return True
        return False

    def _running(self, module: nn.Module) -> bool:
        """Is ``module`` the model whose forward is running (replayed, idle or recorded)?"""
        return module is self._root or module is self._idle_root or (
            self._full is not None and self._full[0] is module)

    @hook_of_ours
    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        tracker = self.tracker
        if self._depth and self._running(module):
            outermost = tracker.root_frame()
            if outermost is None or call_frame(sys._getframe(1)) is not outermost:
                self._depth -= 1  # a call of the model inside its own forward returned
                return
            self._depth = 0  # the outermost call: inner ones a Ctrl-C cut short left theirs
        if self._full is not None and self._full[0] is module:
            _, key, before, unwound = self._full
            self._full = None
            # (a forward that raised: none; nor while another thread has run modules: its
            # calls would be in the difference, and replayed at every forward; nor one with
            # calls a Ctrl-C cut short, which it caught: their counts are not a forward's)
            if output is not None and key is not None and len(tracker._stacks) == 1 \
                    and tracker.unwound == unwound:
                self._patterns[key] = _Pattern(before, tracker.records)
            elif key is not None:
                self._patterns.pop(key, None)  # (recorded in full from now on)
            if not self.full_step:
                tracker.forward_hooks(False)
        elif self._root is module:
            self._root, pattern, self._pattern = None, self._pattern, None
            tracker.light_entry = None
            tracker.end_root_frame()
            if output is None:  # it raised: name the model at least
                tracker._note_failure(module, args)
            if not pattern.pending:
                self._replayed.append(pattern)
            pattern.pending += 1  # added to the records when they are read (flush)
        elif self._idle_root is module:
            self._idle_root, pattern, self._idle_pattern = None, self._idle_pattern, None
            tracker.light_entry = None
            tracker.end_root_frame()
            if not pattern.pending:  # counted once it returns (a Ctrl-C skips this hook)
                self._replayed.append(pattern)
            pattern.pending += 1
            if output is None and not _inside_backward():
                # An idle forward raised: recorded as any other would be. (Inside a backward
                # it is checkpointing's recomputation, which ends early by raising.)
                self.steady.wake()
                tracker._note_failure(module, args)
        if self._record_after and self._root is None and self._idle_root is None:
            self._record_after = False  # (the replayed forward that asked has returned)
            self.record_next()

    def _abandoned(self) -> None:
        """The forward running was unwound by a Ctrl-C (``tracker.drop_abandoned``): a replay
        it began is not counted, and a full recording makes no pattern (the next forward of its
        kind is recorded in full again). The global hooks such a recording put in come out at
        the next optimizer step, where no forward runs (here a hook of this very call may be
        running: taken out now, its post hook would not run)."""
        if self._full is not None and not self.full_step:
            self._hooks_out = True
        self._forget_forward()

    def _forget_forward(self) -> None:
        """No forward of a root runs any more (light mode stops, or one was abandoned)."""
        self._full = self._root = self._pattern = self._idle_root = None
        self._idle_pattern = None
        self._depth = 0

    def flush(self) -> None:
        """Add the replays counted so far to the module records (before anyone reads them:
        the report, or a full recording measuring what one forward adds)."""
        replayed, self._replayed = self._replayed, []
        for pattern in replayed:
            pattern.replay(self.tracker.records)

    # -- what makes two forwards the same ------------------------------------------------------
    def _signature(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        """What a forward must share with a recorded one to be counted as it: modes (the
        model's, grad, autocast, its dropout and batch-norm layers') and the inputs' shapes,
        dtypes, devices and small scalar values (containers one level in). Idle steps
        compare the same."""
        modes = self._modes.get(id(module))
        if modes is None:
            modes = self._modes[id(module)] = [m for m in module.modules() if isinstance(
                m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm))]
        if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:
            x = args[0]  # model(x): the usual call, without a function call per argument
            try:
                inputs = ((x.shape, x.dtype, x.device, x.requires_grad),)
            except RuntimeError:  # a nested tensor has no single shape
                inputs = (_describe(x, 1),)
        else:
            inputs = tuple(map(_describe_arg, args)) if isinstance(args, tuple) \
                else _describe(args, 2)
        return (module.training, torch.is_grad_enabled(), torch.is_autocast_enabled(),
                tuple([m.training for m in modes]) if modes else (), inputs,
                tuple([(k, _describe(v, 1)) for k, v in kwargs.items()]) if kwargs else ())


class _Pattern:
    """What one forward added to the module records: calls and batch-norm statistics."""

    __slots__ = ("calls", "batches", "pending")

    def __init__(self, before: dict, records: dict) -> None:
        self.pending = 0  # forwards replayed since the last flush
        self.calls: list = []
        self.batches: list = []
        for key, rec in records.items():
            calls, stats = before.get(key, (0, {}))
            if rec.calls != calls:
                self.calls.append((key, rec.calls - calls))
            for shape, n in (rec.batch_stats or {}).items():
                if n != stats.get(shape, 0):
                    self.batches.append((key, shape, n - stats.get(shape, 0)))

    def replay(self, records: dict) -> None:
        """Add ``pending`` forwards' worth of calls and statistics to ``records``."""
        times, self.pending = self.pending, 0
        for key, n in self.calls:
            rec = records.get(key)
            if rec is not None:
                rec.calls += n * times
        for key, shape, n in self.batches:
            rec = records.get(key)
            if rec is not None and rec.batch_stats is not None:
                rec.batch_stats[shape] = rec.batch_stats.get(shape, 0) + n * times


def _counts(records: dict) -> dict:
    return {key: (rec.calls, dict(rec.batch_stats) if rec.batch_stats else {})
            for key, rec in records.items()}


def _describe_arg(value: Any) -> Any:
    """One positional argument of a forward (:func:`_describe` one level deep)."""
    return _describe(value, 1)


def _describe(value: Any, depth: int) -> Any:
    """A hashable summary of a forward argument: tensors by shape, dtype, device and
    requires_grad; small scalars by value (they may choose a branch); containers one level."""
    if isinstance(value, torch.Tensor):
        try:
            shape = value.shape  # a torch.Size: a tuple, hashable as it is
        except RuntimeError:  # a nested tensor has no single shape
            shape = "nested"
        return (shape, value.dtype, value.device, value.requires_grad)
    if isinstance(value, _SCALARS):
        return value
    if depth > 0 and isinstance(value, (list, tuple)):
        return tuple(_describe(v, depth - 1) for v in value)
    if depth > 0 and isinstance(value, dict):
        return tuple((k, _describe(v, depth - 1)) for k, v in value.items())
    return type(value)
