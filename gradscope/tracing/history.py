"""Where tensors leave autograd, seen by the op watch (``gradscope trace`` only).

The autograd graph cannot show where it was cut: a ``.detach()``, ``.data``, ``.item()``,
``.tolist()``, ``.numpy()``, ``argmax`` or ``torch.tensor(t)`` leaves no node behind. The op
watch sees those calls, so this recorder keeps one record per (op, ``file:line``):

- **cuts**: an op that took a tensor with history (or a trainable leaf) and gave a value without
  it. The first time a site runs, the parameters upstream of the cut are looked up (a bounded
  walk), so that a check can say "``model.enc`` gets no gradient because its output was
  detached at model.py:12".
- **switches**: ``requires_grad`` switched on for a tensor without history
  (``loss.requires_grad = True``, ``loss.requires_grad_()``, ``torch.tensor(x, requires_grad=
  True)``): the usual way "element 0 of tensors does not require grad" is silenced, which makes
  backward run on a leaf and train nothing.
- **functional calls** that depend on the mode: ``F.dropout`` (and its 1d/2d/3d/alpha forms)
  and ``scaled_dot_product_attention``'s ``dropout_p`` called directly in a forward, with the
  module's mode at each call and whether the call passes ``training=`` at all; and
  ``softmax``/``log_softmax`` calls with their ``dim`` (softmax-batch-dim names their line).

Every record is plain data; counts are per site, so a loop costs a dict lookup per op.
"""
from __future__ import annotations

import linecache
import os
import sys
from typing import Any, Callable, Optional

import torch

from .locations import display_path, is_installed_file, is_library_file, user_frame
from .sourcecheck import DROPOUTS, SDPA, passes_mode

CUT_OPS = {"detach", "tolist", "item", "numpy", "argmax", "argmin", "__float__", "__int__"}
# Comparisons give booleans: no history (a loss from (sigmoid(out) > 0.5).float() is flat).
COMPARISONS = {"gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__",
               "__eq__", "__ne__", "greater", "less", "greater_equal", "less_equal"}
# Ops that keep history but whose derivative is zero (almost) everywhere: a loss built on
# them trains nothing although every parameter "receives" a gradient.
FLAT_OPS = {"round", "floor", "ceil", "sign", "sgn", "trunc", "fix"}
FACTORIES = {"tensor", "as_tensor"}
SWITCH_FACTORIES = {"tensor", "as_tensor", "scalar_tensor"}
SOFTMAXES = {"softmax", "log_softmax"}
NAMES = CUT_OPS | COMPARISONS | FLAT_OPS | FACTORIES | SWITCH_FACTORIES | DROPOUTS | SOFTMAXES | {
    SDPA, "__get__", "__set__", "requires_grad_"}

MAX_SITES = 100         # distinct sites kept per kind
MAX_BACKWARDS = 64      # backward indices remembered per site
MAX_UPSTREAM_WALK = 50_000
MAX_UPSTREAM_MODULES = 2000
_MODULES_DIR = os.sep + "nn" + os.sep + "modules" + os.sep


class HistoryRecorder:
    """Called by the op watch for the ops in ``NAMES``. ``counters()`` gives the capture's
    ``(backward calls, optimizer steps)`` so far."""

    def __init__(self, tracker: Any, counters: Callable[[], tuple]) -> None:
        self.tracker = tracker
        self.counters = counters
        self.cuts: dict = {}
        self.switches: dict = {}
        self.dropouts: dict = {}
        self.softmaxes: dict = {}
        self.ticks = 0
        self._param_table: Optional[tuple] = None  # (root_calls, {id: (model, name)})
        self._locations: dict = {}

    def note(self, name: str, func: Any, args: tuple, kwargs: dict, result: Any) -> None:
        if name == "__get__":
            if _descriptor(func) == "data":
                self._cut("data", args[0] if args else None)
        elif name == "__set__":
            if _descriptor(func) == "requires_grad" and len(args) > 1 and args[1]:
                self._switch("requires_grad = True", args[0])
        elif name == "requires_grad_":
            if kwargs.get("requires_grad", args[1] if len(args) > 1 else True):
                self._switch("requires_grad_()", args[0] if args else None)
        elif name in DROPOUTS or name == SDPA:
            self._dropout(name, args, kwargs)
        elif name in SOFTMAXES:
            self._softmax(name, args, kwargs)
        else:
            if name in FACTORIES:
                data = args[0] if args else kwargs.get("data")
                self._cut(f"torch.{name}", data)
            elif name in CUT_OPS or name in COMPARISONS or name in FLAT_OPS:
                first = args[0] if args else None
                if not isinstance(first, torch.Tensor) and len(args) > 1:
                    first = args[1]  # 0.5 < t
                self._cut(name, first, flat=name in FLAT_OPS)
            if name in SWITCH_FACTORIES and kwargs.get("requires_grad"):
                data = args[0] if args else kwargs.get("data")
                if not isinstance(data, torch.Tensor):
                    self._switch(f"torch.{name}(..., requires_grad=True)", result)

    # -- records -------------------------------------------------------------------------------
    def _site(self, table: dict, key: tuple, make: Callable[[], dict]) -> Optional[dict]:
        rec = table.get(key)
        if rec is None:
            if len(table) >= MAX_SITES:
                return None
            rec = table[key] = make()
        self.ticks += 1
        rec["count"] += 1
        rec["tick"] = self.ticks
        backward, steps = self.counters()
        seen = rec["backwards"]
        if backward not in seen:
            if len(seen) >= MAX_BACKWARDS:
                del seen[MAX_BACKWARDS // 2]  # keep the first half, roll the latest
            seen.append(backward)
        rec["steps_before"] = steps
        return rec

    def _where(self) -> tuple:
        current = self.tracker.current() if self.tracker is not None else None
        frame = user_frame(sys._getframe(1))
        if frame is None:
            return None, current
        key = (frame.f_code.co_filename, frame.f_lineno)
        location = self._locations.get(key)
        if location is None:  # relpath per op would cost more than most ops
            location = self._locations[key] = f"{display_path(key[0])}:{key[1]}"
        return location, current

    def _source(self) -> Optional[str]:
        """The user's source line of the current op, shortened (for messages)."""
        frame = user_frame(sys._getframe(1))
        if frame is None:
            return None
        text = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        return (text[:117] + "...") if len(text) > 120 else (text or None)

    def _cut(self, op: str, t: Any, flat: bool = False) -> None:
        if not isinstance(t, torch.Tensor) or not t.requires_grad:
            return
        location, current = self._where()
        key = (op, location)
        first = key not in self.cuts
        rec = self._site(self.cuts, key, lambda: {
            "op": op, "location": location, "model": current[0] if current else None,
            "module": current[1] if current else None, "in_forward": current is not None,
            "shape": shape_of(t),
            "grad_fn": type(t.grad_fn).__name__ if t.grad_fn is not None else None,
            "count": 0, "backwards": [], "upstream_modules": [], "upstream_parameters": 0,
            "flat": flat})
        if rec is not None and first:
            modules, count = self._upstream(t)
            rec["upstream_modules"], rec["upstream_parameters"] = modules, count
            rec["source"] = self._source()

    def _switch(self, op: str, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.grad_fn is not None \
                or isinstance(t, torch.nn.Parameter):
            return
        location, current = self._where()
        self._site(self.switches, (op, location), lambda: {
            "op": op, "location": location, "in_forward": current is not None,
            "shape": shape_of(t),
            "count": 0, "backwards": []})

    def _dropout(self, name: str, args: tuple, kwargs: dict) -> None:
        if name == SDPA:
            p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
            training = True  # SDPA has no training flag: dropout_p applies in any mode
        else:
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
        if not isinstance(p, (int, float)) or p <= 0 or not training:
            return
        module = self.tracker.current_module() if self.tracker is not None else None
        if module is None:
            return  # outside any forward: not the model's behaviour
        caller = _direct_caller(sys._getframe(2))
        if caller is None:
            return  # nn.Dropout, nn.MultiheadAttention or a library: they pass the mode
        path, line = caller.f_code.co_filename, caller.f_lineno
        location = f"{display_path(path)}:{line}"
        current = self.tracker.current()
        rec = self._site(self.dropouts, (name, location), lambda: {
            "fn": name, "location": location, "model": current[0], "module": current[1],
            "p": float(p), "count": 0, "eval_calls": 0, "backwards": [],
            "passes_mode": passes_mode(path, line, name)})
        if rec is not None and not module.training:
            rec["eval_calls"] += 1

    def _softmax(self, name: str, args: tuple, kwargs: dict) -> None:
        t = args[0] if args else kwargs.get("input")
        if not isinstance(t, torch.Tensor) or not t.requires_grad or t.dim() < 2:
            return
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        dim = dim if isinstance(dim, int) else None
        location, current = self._where()
        shape = shape_of(t)
        # one site per line and dim: batches of varying length must not use the sites up
        rec = self._site(self.softmaxes, (name, location, dim), lambda: {
            "fn": name, "location": location, "dim": dim, "shape": shape, "shapes": [],
            "model": current[0] if current else None,
            "module": current[1] if current else None, "count": 0, "backwards": []})
        if rec is not None and shape not in rec["shapes"] and len(rec["shapes"]) < 8:
            rec["shapes"].append(shape)

    # -- upstream parameters -------------------------------------------------------------------
    def _upstream(self, t: torch.Tensor) -> tuple:
        """Modules (``model.module``) holding the trainable leaves behind ``t``, and how many
        parameters: a bounded walk, once per cut site."""
        table = self._parameters()
        found: set = set()
        count = 0
        if t.grad_fn is None:
            hit = table.get(id(t))
            return ([_module_of(*hit)], 1) if hit else ([], 0)
        todo = [t.grad_fn]
        seen = {id(t.grad_fn)}
        while todo and len(seen) < MAX_UPSTREAM_WALK:
            fn = todo.pop()
            var = getattr(fn, "variable", None)
            if var is not None:
                hit = table.get(id(var))
                if hit is not None:
                    count += 1
                    found.add(_module_of(*hit))
            for nxt, _ in fn.next_functions:
                if nxt is not None and id(nxt) not in seen:
                    seen.add(id(nxt))
                    todo.append(nxt)
        return sorted(found)[:MAX_UPSTREAM_MODULES], count

    def _parameters(self) -> dict:
        stamp = self.tracker.root_calls
        if self._param_table is None or self._param_table[0] != stamp:
            table = {}
            for label, model in list(self.tracker.models.items()):
                if model is None:
                    continue
                for name, p in model.named_parameters(remove_duplicate=False):
                    table.setdefault(id(p), (label, name))
            self._param_table = (stamp, table)
        return self._param_table[1]

    def records(self) -> dict:
        def rows(table: dict) -> list:
            return [{k: v for k, v in rec.items() if k != "tick"} | {"order": rec["tick"]}
                    for rec in table.values()]
        return {"cuts": rows(self.cuts), "switches": rows(self.switches),
                "dropouts": rows(self.dropouts), "softmaxes": rows(self.softmaxes)}

    def stop(self) -> None:
        self.tracker = None
        self._param_table = None
        self.counters = lambda: (0, 0)  # drop the capture


def shape_of(t: torch.Tensor) -> Optional[list]:
    """A tensor's shape as plain ints, or None (sparse, nested with ragged sizes, symbolic)."""
    try:
        return [int(d) for d in t.shape] if t.layout == torch.strided else None
    except Exception:  # noqa: BLE001 - a SymInt or a ragged dimension
        return None


def _module_of(model: str, param: str) -> str:
    module = param.rpartition(".")[0]
    return f"{model}.{module}" if module else model


def _descriptor(func: Any) -> Optional[str]:
    """The attribute a property get/set of a tensor is about (``data``, ``requires_grad``)."""
    return getattr(getattr(func, "__self__", None), "__name__", None)


def _direct_caller(frame: Any) -> Any:
    """The user frame that called a torch function itself, or None when a torch module
    (``nn.Dropout``, ``nn.MultiheadAttention``) or another library made the call."""
    while frame is not None and is_library_file(frame.f_code.co_filename):
        if _MODULES_DIR in frame.f_code.co_filename:
            return None
        frame = frame.f_back
    if frame is None or is_installed_file(frame.f_code.co_filename):
        return None
    return frame
