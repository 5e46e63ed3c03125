"""Two things the autograd graph cannot show, seen through wrappers of the torch functions
that can do them (``oppatches``):

- host<->device copies made inside a model's forward (``.cpu()``, ``.to(device)``, ``.item()``,
  ``torch.tensor(data, device=...)``, ...), most of which never enter the graph because the
  tensor does not require grad;
- in-place operations (``x += 1``, ``x[:, 0] = 0``, ``relu_``, ``inplace=True``) with their
  module and ``file:line``, so that autograd's "modified by an inplace operation" error can be
  traced back to the line that did it.

It is used by ``gradscope trace`` only (scripts, ``FILE.py:NAME`` and ``gradscope.trace``): a
Python call per watched call is fine for a diagnostic run, too much for ``watch`` left on in
training. It records plain data and never changes what a function returns. Saved-tensor hooks
would be the other way to see in-place damage, but while one is registered autograd skips its
own version check, so the user's error would disappear; version counters cost nothing.
"""
from __future__ import annotations

import collections
import sys
import threading
from typing import Any, Optional

import torch

from .failures import sequence_nr
from .modules import _peek_sequence_nr
from .history import NAMES as _HISTORY_NAMES, HistoryRecorder
from .locations import display_path, user_frame, user_location
from .oppatches import LAYER_FUNCS as _LAYER_FUNCS, NOT_INPLACE as _NOT_INPLACE, OP_PATCHES

MAX_TRANSFER_KEYS = 200   # distinct (module, op, devices, line) transfer records
MAX_INPLACE = 4096        # most recent in-place operations remembered
# Tensor methods that copy between devices (the result says where to).
_COPY_METHODS = {"to", "cuda", "cpu", "copy_", "pin_memory"}
# Calls that read a tensor's values into Python: a device->host copy (and a sync on CUDA).
_HOST_READS = {"item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"}
# Factories that build a tensor from Python data: a host->device copy when device= is not CPU.
_FACTORIES = {"tensor", "as_tensor", "new_tensor"}
# Losses that apply (log-)softmax or sigmoid themselves: where they are called (double-softmax).
_LOSSES = {"cross_entropy", "binary_cross_entropy_with_logits"}
MAX_LOSS_SITES = 50
# Losses that compare a prediction with a target element by element: different shapes are
# broadcast against each other (torch only warns, for some), which is almost never meant.
_SHAPE_LOSSES = {"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss",
                 "poisson_nll_loss", "kl_div"}
# The hand-written form, ((pred - y) ** 2).mean(): (N, 1) - (N,) is an (N, N) matrix.
_SUBTRACTIONS = {"sub", "__sub__", "__rsub__", "rsub", "subtract"}
MAX_BROADCASTS = 50
# Iterating a tensor (``for x in t``, builtin ``sum(t)``) unbinds it into one tensor per row:
# where that happens to a grad-requiring tensor of many rows (builtin-sum names the line).
_ITERATIONS = {"__iter__", "unbind"}
MIN_ITERATED_ROWS = 16
MAX_ITERATION_SITES = 50
_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
                    "__irshift__", "__imatmul__", "__setitem__"}


def _peek_seq() -> int:
    return _peek_sequence_nr() if _peek_sequence_nr is not None else 0


def _device_str(device: Any) -> str:
    return str(device)


def _nbytes(t: torch.Tensor) -> int:
    try:
        return t.numel() * t.element_size()
    except Exception:  # noqa: BLE001 - nested or odd tensors: size unknown
        return 0


class OpWatch:
    """Records device copies inside forwards and in-place ops; ``tracker`` says which module
    is running. Every record is plain data. The calls reach it through the wrappers of
    ``oppatches`` (open: ``with watch:``), on the thread that opened it."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.transfers: dict = {}        # key -> record (at most MAX_TRANSFER_KEYS)
        self.inplace: collections.deque = collections.deque(maxlen=MAX_INPLACE)
        self.errors: list = []
        self.loss_sites: dict = {}       # (loss function, file:line) -> calls
        self.broadcasts: dict = {}       # (op, file:line, shapes) -> record
        self.iterations: dict = {}       # (file:line, rows) -> calls
        # cuts of the graph, requires_grad switches, functional dropout and softmax calls
        self.history = HistoryRecorder(tracker, lambda: (0, 0))
        self._active = True
        self.thread = threading.get_ident()
        self._open = False

    def __enter__(self) -> "OpWatch":
        self.thread = threading.get_ident()
        OP_PATCHES.add(self)
        self._open = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop seeing calls (idempotent); the wrappers go with the last open watch."""
        if self._open:
            self._open = False
            OP_PATCHES.remove(self)

    def before(self, name: str, args: tuple, kwargs: dict, inplace: bool, frame: Any) -> Any:
        """A call of interest is about to run (``frame``: the one that called it). Returns
        what :meth:`after` needs, or None."""
        if not self._active:
            return None
        layer = nested = start = before = None
        if name in _LAYER_FUNCS and self.tracker is not None:
            if not self.tracker.in_forward():
                layer = True
                self._guarded(name, self.tracker.direct.leaf_op, frame)
            else:  # inside a forward: from a submodule whose forward was called directly?
                nested = self._guarded(name, self.tracker.direct.nested_op, frame)
                start = _peek_seq() if nested else None
        if inplace or (name.endswith("_") and not name.startswith("__")
                       and name not in _NOT_INPLACE) or name in _INPLACE_DUNDERS \
                or kwargs.get("inplace") is True:
            before = self._guarded(name, self._before_inplace, args)
        if layer is None and nested is None and before is None:
            return None
        return layer, nested, start, before

    def after(self, name: str, func: Any, args: tuple, kwargs: dict, inplace: bool,
              result: Any, token: Any) -> None:
        """The call returned ``result`` (``token``: what :meth:`before` gave)."""
        if not self._active:
            return
        if token is not None:
            layer, nested, start, before = token
            if layer:
                self._guarded(name, self.tracker.direct.child_done)
            elif nested:  # that op is the directly-called module's
                self.tracker.add_range(start, _peek_seq(), *nested)
            if before is not None:
                self._guarded(name, self._note_inplace, name, before)
        if name in _COPY_METHODS or name in _HOST_READS or name in _FACTORIES:
            self._guarded(name, self._note_transfer, name, args, kwargs, result)
        elif name in _LOSSES:
            self._guarded(name, self._note_loss, name)
        elif name in _SUBTRACTIONS or name in _SHAPE_LOSSES:
            self._guarded(name, self._note_broadcast, name, args, kwargs, result)
        elif name in _ITERATIONS:
            self._guarded(name, self._note_iteration, args)
        if name in _HISTORY_NAMES:
            self._guarded(name, self.history.note, name, func, args, kwargs, result)

    def _note_iteration(self, args: tuple) -> None:
        t = args[0] if args else None
        if not isinstance(t, torch.Tensor) or not t.requires_grad or t.dim() == 0 \
                or t.shape[0] < MIN_ITERATED_ROWS:
            return
        current = self.tracker.current() if self.tracker is not None else None
        key = (user_location(), int(t.shape[0]), tuple(t.shape[1:]),
               current[0] if current else None, current[1] if current else None)
        if key in self.iterations or len(self.iterations) < MAX_ITERATION_SITES:
            self.iterations[key] = self.iterations.get(key, 0) + 1

    def iteration_records(self) -> list:
        return [{"location": loc, "rows": rows, "piece": list(piece), "model": model,
                 "module": module, "calls": n}
                for (loc, rows, piece, model, module), n in self.iterations.items()]

    def _note_loss(self, name: str) -> None:
        key = (name, user_location())
        if key in self.loss_sites or len(self.loss_sites) < MAX_LOSS_SITES:
            self.loss_sites[key] = self.loss_sites.get(key, 0) + 1

    def _note_broadcast(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        if name in _SHAPE_LOSSES:
            pred = args[0] if args else kwargs.get("input")
            target = args[1] if len(args) > 1 else kwargs.get("target")
            if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor) \
                    or pred.shape == target.shape:
                return
            try:
                shape = torch.broadcast_shapes(pred.shape, target.shape)
            except RuntimeError:
                return  # torch raises about it itself
        else:
            a = args[0] if args else None
            b = args[1] if len(args) > 1 else kwargs.get("other")
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) \
                    or a.requires_grad == b.requires_grad or not isinstance(result, torch.Tensor):
                return  # pairwise differences of one tensor with itself are deliberate
            pred, target = (a, b) if a.requires_grad else (b, a)
            column, flat = (pred, target) if pred.dim() == 2 else (target, pred)
            if not (column.dim() == 2 and flat.dim() == 1 and column.shape[1] == 1
                    and column.shape[0] == flat.shape[0] > 1):
                return  # only the (N, 1) against (N,) mistake: an N x N matrix
            shape = result.shape
        location = user_location()
        key = (name, location, tuple(pred.shape), tuple(target.shape))
        rec = self.broadcasts.get(key)
        if rec is None:
            if len(self.broadcasts) >= MAX_BROADCASTS:
                return
            current = self.tracker.current() if self.tracker is not None else None
            rec = self.broadcasts[key] = {
                "op": name, "location": location, "prediction": list(pred.shape),
                "target": list(target.shape), "result": list(shape),
                "model": current[0] if current else None,
                "module": current[1] if current else None, "calls": 0}
        rec["calls"] += 1

    def broadcast_records(self) -> list:
        return [dict(rec) for rec in self.broadcasts.values()]

    def loss_site_records(self) -> list:
        return [{"op": op, "location": loc, "calls": n}
                for (op, loc), n in self.loss_sites.items()]

    def _guarded(self, name: str, fn: Any, *args: Any) -> Any:
        try:  # (torch pops this mode while the handler runs: our own reads are not seen)
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - never break the user's op over a record
            if len(self.errors) < 3:
                self.errors.append(f"{name}: {e!r}")
            return None

    def stop(self) -> None:
        self._active = False
        self.close()
        self.tracker = None  # nothing of the run stays reachable from the watch
        self.history.stop()

    # -- device copies -------------------------------------------------------------------------
    def _note_transfer(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        if not self.tracker.in_forward():
            return  # moving the batch before the forward is what everyone does
        if name in _FACTORIES:
            if not isinstance(result, torch.Tensor) or result.device.type == "cpu":
                return
            data = args[1] if name == "new_tensor" and len(args) > 1 else (
                args[0] if args else kwargs.get("data"))
            source = data.device if isinstance(data, torch.Tensor) else torch.device("cpu")
            if source == result.device:
                return  # torch.as_tensor(x, device=x.device): nothing moved
            src, dst, moved = _device_str(source), _device_str(result.device), _nbytes(result)
        else:
            source = args[0] if args else None
            if name == "copy_" and len(args) > 1:
                source, result = args[1], args[0]
            if not isinstance(source, torch.Tensor):
                return
            if name in _HOST_READS:
                if source.device.type == "cpu":
                    return
                src, dst, moved = _device_str(source.device), "host", _nbytes(source)
            else:
                if not isinstance(result, torch.Tensor) or result.device == source.device:
                    return  # .to() a no-op, or a dtype change on the same device
                src, dst, moved = _device_str(source.device), _device_str(result.device), \
                    _nbytes(result)
        current = self.tracker.current()
        model, module = current if current is not None else (None, None)
        location = user_location()
        key = (model, module, name, src, dst, location)
        rec = self.transfers.get(key)
        if rec is None:
            if len(self.transfers) >= MAX_TRANSFER_KEYS:
                return
            rec = self.transfers[key] = {
                "model": model, "module": module, "op": name, "src": src, "dst": dst,
                "location": location, "count": 0, "bytes": 0, "forwards": 0, "_last": -1}
        rec["count"] += 1
        rec["bytes"] += moved
        forward = self.tracker.root_calls
        if rec["_last"] != forward:
            rec["_last"] = forward
            rec["forwards"] += 1

    def transfer_records(self) -> list:
        out = []
        for rec in self.transfers.values():
            row = {k: v for k, v in rec.items() if not k.startswith("_")}
            out.append(row)
        return out

    # -- in-place operations -------------------------------------------------------------------
    def _before_inplace(self, args: tuple) -> Optional[tuple]:
        """The tensor and the autograd nodes that made it (and the bases it is a view of),
        read before the op: an in-place op replaces the tensor's grad_fn."""
        t = args[0] if args else None
        if not isinstance(t, torch.Tensor):
            return None
        if not (t.requires_grad or (torch.is_grad_enabled() and self.tracker.in_forward())):
            return None  # data preparation: nothing of it was saved for a backward of ours
        producers = []
        node = t
        while node is not None:  # the tensor and the bases it is a view of share one version
            seq = sequence_nr(node.grad_fn)
            if seq is not None:
                producers.append(seq)
            node = node._base
        return t, producers

    def _note_inplace(self, name: str, before: tuple) -> None:
        t, producers = before
        current = self.tracker.current()
        frame = user_frame(sys._getframe(1))
        self.inplace.append({
            "op": name, "shape": list(t.shape), "version": t._version,
            "producers": producers,
            "model": current[0] if current else None, "module": current[1] if current else None,
            # formatted only when an error needs it: a path per op would cost more than the op
            "_where": (frame.f_code.co_filename, frame.f_lineno) if frame else None,
            "forward": self.tracker.root_calls})

    def inplace_records(self) -> list:
        """The remembered in-place ops, oldest first, with ``location`` as ``path:line``."""
        out = []
        for rec in self.inplace:
            where = rec["_where"]
            row = {k: v for k, v in rec.items() if k != "_where"}
            row["location"] = f"{display_path(where[0])}:{where[1]}" if where else None
            out.append(row)
        return out
