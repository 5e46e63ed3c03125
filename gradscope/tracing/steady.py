"""Steady steps: a watch session's cheapest state, for a loop that repeats the same step.

After the warm-up a watch session already replays recorded forwards (``lightmode``) and keeps
the gradient counts of a uniform loop once (``uniform``); what is left costs ~300 us a step on a
fast CPU step (five Python entries, each the first Python after torch work and slowed by cold
caches, three passes over the gradients, four timeline events). When two consecutive full steps
are the same (the same hooks in the same order, with the same arguments' shapes and modes,
the same events at the same lines, the uniform gradient record, no registration; a step whose
forwards were recorded in full, as the periodic one every ``lightmode.FULL_EVERY`` steps is,
is passed over: the step after it is compared with the step before it), the steps
up to the next multiple of ``WINDOW`` are *idle*: each of our entry points checks that its call
is the next one of the recorded step (a tuple comparison, and one frame: the same line of the
user's code called it) and counts it; backward calls keep their loss for the finiteness read,
and the forward replays are counted as before. Anything else (another hook, an event of any
other kind, a forward with other shapes or modes or an input carrying older history, a loss of
another kind or without history, a step of another optimizer or with other parameter groups,
a registration, a report being read) wakes the session first: the idle
steps are written into the records as the recorded step would have written them, the gradient
bookkeeping is brought to where the skipped passes would have left it, and the call is recorded
in full. (A wake inside a backward, from checkpointing's recomputation, leaves the gradient
bookkeeping until that backward has returned.) Every ``WINDOW``-th step is recorded in full
(it reads the gradient norms), and the session goes idle again only after that step matched
the recorded one.

What idle steps assume: a step that calls the same hooks in the same order, with the same
shapes and modes, does to the gradients what the recorded step did. A parameter frozen with
``requires_grad_(False)`` between two full steps, say, is seen at the next full step.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any, Optional

import torch

from .gradients import _scaler_found_inf, stream_capturing
from .locations import user_site
from .modules import _peek_sequence_nr
from .patches import PATCHES, backward_running
from .uniform import GRAD, none_missing

WINDOW = 64  # idle steps end before each multiple of this; that step is recorded in full
# (and reads the gradient norms). At 32, that step and the wake before it cost a 5 ms step
# of a 20-layer MLP about 0.7% on their own (bench/RESULTS.md); a read at every 64th step is
# still 15 times as dense as wandb.watch's default (log_freq=1000).
MAX_ENTRIES = 64  # a step with more entries of ours than this is never idle
_KINDS = frozenset(("zero_grad", "forward", "backward", "step"))
_PERIODIC = ("periodic",)  # _signature: a step that is neither compared nor a pattern


class SteadySteps:
    """The recorded step and the idle steps counted against it (see the module docstring)."""

    def __init__(self, capture: Any) -> None:
        self.cap = capture
        self.idle = False
        self.idle_steps = 0        # steps this session spent idle (for tests and the bench)
        # the step being recorded in full: [(key, extra, events so far, root calls, looks)]
        self.codes: list = []
        self.events: list = []     # its events (the dicts of the timeline)
        self._mark = (0, 0)        # (root calls, keepalive calls) at the last step
        self._prev: Optional[tuple] = None  # the last full step's signature
        # while idle
        self.seen: list = []       # entries of the current idle step so far
        self.done = 0              # idle steps completed, not yet written into the records
        self._pattern: Optional[dict] = None
        # woken during a backward: the gradient bookkeeping waits until it has returned
        self.resync_pending: Optional[int] = None

    # -- recording a full step -----------------------------------------------------------------
    def note(self, key: tuple, extra: Any = None) -> None:
        """An entry point of ours ran in full (its event, if any, is recorded already)."""
        cap = self.cap
        if len(self.codes) <= MAX_ENTRIES:  # (a loop of forwards without steps: no pattern)
            # the user's line that called it: an idle call from another line is no repeat
            self.codes.append((key, extra, len(self.events), cap.tracker.root_calls,
                               cap.keepalive.calls, _site(sys._getframe(1))))

    def add_event(self, event: dict) -> None:
        """An event of the step being recorded in full."""
        if len(self.events) <= MAX_ENTRIES:
            self.events.append(event)

    def learn(self, optimizer: Any, serial: Optional[int], frame: Any) -> None:
        """At the end of a step recorded in full: go idle if it repeated the previous step.
        ``frame``: the capture's optimizer-step hook (the caller of :meth:`step`)."""
        cap = self.cap
        codes, events = self.codes, self.events
        self.codes, self.events = [], []
        mark, self._mark = self._mark, (cap.tracker.root_calls, cap.keepalive.calls)
        sig = self._signature(codes, events, serial)
        if sig is _PERIODIC:
            return  # (the step after it is compared with the step before it)
        if sig is not None and _scaler_found_inf(optimizer) is not None:
            sig = None  # a fused step GradScaler may skip: its flag is read at every step
        prev, self._prev = self._prev, sig
        if sig is None or sig != prev:
            return
        step = cap.optimizer_steps
        until = (step // WINDOW + 1) * WINDOW
        last = cap.gradients.last_uniform
        if until - step < 2 or last is None or last[0] != step:
            return
        g = cap.gradients
        self._pattern = {
            "codes": codes, "events": events, "optimizer": weakref.ref(optimizer),
            "serial": serial, "generation": cap.registrations.generation, "until": until,
            "start_step": step, "start_backward": cap.backward_calls,
            "record": last[1:], "roots": cap.tracker.root_calls - mark[0],
            "looks": cap.keepalive.calls - mark[1], "start": mark,
            "loss_location": next((e.get("location") for e in events
                                   if e["kind"] == "backward"), None),
            "groups": _groups(optimizer), "step_site": _site(frame),
            # held while idle (a registration wakes the session at the next step)
            "params": g._params_now()}
        self.seen, self.done = [], 0
        self.idle = True

    def _signature(self, codes: list, events: list, serial: Optional[int]) -> Optional[tuple]:
        cap = self.cap
        light = cap.light
        if light is None or not light.active or not codes \
                or len(codes) > MAX_ENTRIES or len(events) > MAX_ENTRIES \
                or cap.nonfinite is not None or cap.tracker.compiled \
                or cap.tracker.direct.records or cap.gradients.last_uniform is None \
                or cap.gradients.last_uniform[0] != cap.optimizer_steps \
                or cap.gradients._fingerprinted:
            return None
        if light.full_step or light.full_ended == cap.optimizer_steps \
                or any(key[0] == "F" for key, *_ in codes):
            # The periodic full recording (the next step's forward, or this one's), or a
            # forward recorded in full (nothing to replay): no pattern, and no break either.
            return _PERIODIC
        kinds = {e["kind"] for e in events}
        if not kinds <= _KINDS:
            return None  # a clip, a scheduler step, ...: cheaply out, at every such step
        normal = []
        for e in events:
            if e.get("leaf_root") or e.get("retain_graph"):
                return None
            normal.append(tuple([(k, v) for k, v in e.items() if k != "index"]))
        return (tuple(key for key, *_ in codes), tuple(normal), serial,
                cap.registrations.generation)

    # -- idle entry points ---------------------------------------------------------------------
    def entry(self, key: tuple, deeper: int = 0) -> Optional[tuple]:
        """An entry point of ours while idle: the recorded entry if this call is the next one
        of the recorded step, from the same line (then it is counted), else None (and the
        session is awake). ``deeper``: how many more frames of ours lie between the caller
        of ``entry`` and the user's than between the caller of ``note`` and the user's."""
        seen = self.seen
        codes = self._pattern["codes"]
        i = len(seen)
        if i < len(codes) and codes[i][0] == key and _same_site(codes[i][5], deeper):
            seen.append(codes[i])
            return codes[i]
        self.wake()
        return None

    def backward(self, roots: Any, kind: str, retain: bool) -> bool:
        """An idle backward call: counted, its loss kept for the finiteness read."""
        if kind != "backward" or not isinstance(roots, torch.Tensor) or roots.dim() != 0 \
                or not roots.is_floating_point() or roots._is_view():
            self.wake()
            return False
        if self.entry(backward_key(roots, kind, retain), 1) is None:
            return False
        cap = self.cap
        cap.backward_calls += 1
        if _peek_sequence_nr is not None and len(cap.backward_seqs) < 100_000:
            cap.backward_seqs.append(_peek_sequence_nr())
        pending = cap.gradients._pending_losses
        pending.append((cap.backward_calls, self._pattern["loss_location"], roots.detach()))
        if len(pending) >= 256:
            cap.gradients.finish_losses()
        return True

    def step(self, optimizer: Any) -> bool:
        """An idle optimizer step: True if it completed the recorded step (counted)."""
        p = self._pattern
        cap = self.cap
        if len(self.seen) != len(p["codes"]) or optimizer is not p["optimizer"]() \
                or cap.registrations.generation != p["generation"] \
                or _groups(optimizer) != p["groups"] \
                or not _same_site(p["step_site"], 0) or stream_capturing():
            self.wake()
            return False
        # Every watched parameter holds a gradient, as in the recorded step (one C pass): a
        # parameter frozen, or cut off from the loss, since then is recorded in full.
        if not none_missing(map(GRAD, p["params"])):
            self.wake()
            return False
        cap.optimizer_steps += 1
        if _peek_sequence_nr is not None and len(cap.step_seqs) < 100_000:
            cap.step_seqs.append(_peek_sequence_nr())
        cap.optimizers.count_step(p["serial"])  # (GradScaler's skip test reads it)
        self.seen = []
        self.done += 1
        self.idle_steps += 1
        if cap.optimizer_steps + 1 >= p["until"]:
            self.wake(planned=True)  # the next step is recorded in full
            if cap.light is not None:  # (with the periodic full recording, when it is due)
                cap.light.before_step(cap.optimizer_steps)
        return True

    # -- waking up -----------------------------------------------------------------------------
    def wake(self, planned: bool = False) -> None:
        """Write the idle steps (and the idle part of the current step) into the records as
        the recorded step wrote them, and record in full from here on."""
        if not self.idle:
            return
        self.idle = False
        self.cap._guard("the idle steps", lambda: self._write(planned))

    def _write(self, planned: bool) -> None:
        p, self._pattern = self._pattern, None
        done, partial = self.done, self.seen
        self.done, self.seen = 0, []
        cap = self.cap
        g = cap.gradients
        optimizer = p["optimizer"]()
        location, names, new, dead = p["record"]
        backward = p["start_backward"]
        events = p["events"]
        if done:  # (in bulk: on a fast step this write is the costliest part of a wake)
            first = p["start_step"] + 1
            backward = self._replay_events(events, backward, first, done)
            if optimizer is not None:
                g.store_idle_steps(first, done, optimizer, location, names, new,
                                   p["serial"], dead)
        roots, looks = done * p["roots"], done * p["looks"]
        backwards = 0
        if partial:
            last = partial[-1]
            self._replay_events(events[:last[2]], backward, None, 1)
            roots += last[3] - p["start"][0]
            looks += last[4] - p["start"][1]
            backwards = sum(1 for key, *_ in partial if key[0] == "b")
        cap.tracker.root_calls += roots
        cap.keepalive.calls += looks
        if backward_running():
            # (checkpointing's recomputation, say): the gradients of this backward are not
            # all written yet; the patched backward finishes this when it returns
            self.resync_pending = backwards
            PATCHES.resync_pending = True
        else:
            g.resync_after_idle(backwards)
        self.codes, self.events = [], []
        self._mark = (cap.tracker.root_calls, cap.keepalive.calls)
        # After a planned wake the next full step may go idle again at once; after any other,
        # two full steps must agree first.
        if not planned:
            self._prev = None

    def finish_resync(self) -> None:
        """The gradient bookkeeping of a wake that came during a backward, now it returned."""
        backwards, self.resync_pending = self.resync_pending, None
        if backwards is not None:
            self.cap.gradients.resync_after_idle(backwards)

    def _replay_events(self, events: list, backward: int, step: Optional[int],
                       count: int) -> int:
        """The recorded step's events again, ``count`` times: numbered as steps ``step``,
        ``step + 1``, ... and as the backward calls after ``backward``; returns the last
        backward's number."""
        cap = self.cap
        if cap.events_room() < 0:  # the timeline was cut: only the numbering goes on
            return backward + count * sum(1 for ev in events if ev["kind"] == "backward")
        out: list = []
        add = out.append
        for k in range(count):
            for ev in events:
                copy = ev.copy()  # (each step its own dicts, as a full step has)
                kind = ev["kind"]
                if kind == "backward":
                    backward += 1
                    copy["index"] = backward
                elif kind == "step":
                    copy["index"] = None if step is None else step + k
                add(copy)
        cap.replayed_events(out)
        return backward


def _site(frame: Any) -> Optional[tuple]:
    """``(depth, code, line)`` of the user's frame that called ``frame``'s function: how many
    frames up it is, so that an idle call checks that one frame only."""
    depth = 1
    user = user_site(frame)
    if user is None:
        return None
    while frame is not None and frame.f_code is not user[0]:
        frame = frame.f_back
        depth += 1
    return depth, user[0], user[1]


def _same_site(site: Optional[tuple], deeper: int) -> bool:
    """Is the frame ``site`` names (from the caller of ``entry``) the same code at the same
    line? (Called from ``entry``: its caller is frame 2 from here.)"""
    if site is None:
        return user_site(sys._getframe(2 + deeper)) is None
    try:
        frame = sys._getframe(site[0] + 1 + deeper)
    except ValueError:  # a shallower stack: called from somewhere else
        return False
    return frame.f_code is site[1] and frame.f_lineno == site[2]


def backward_key(roots: Any, kind: str, retain: bool) -> tuple:
    """What a backward call must share with the recorded one: its kind, retain_graph, and the
    class of the root's autograd node (a loss rebuilt without history has none)."""
    fn = roots.grad_fn if isinstance(roots, torch.Tensor) else None
    return ("b", kind, retain, type(fn))


def _groups(optimizer: Any) -> tuple:
    """Each parameter group's list and its length: a group given other parameters is seen."""
    return tuple([(id(g["params"]), len(g["params"])) for g in optimizer.param_groups])
