"""The torch functions the op watch looks at, wrapped for as long as a trace capture is open.

A ``TorchFunctionMode`` would see every torch call of the program, but it costs torch's mode
dispatch on every one of them, about 10 us a call here (a 1000-layer MLP's forward went from
29 ms to 49 ms with a mode that does nothing), and almost none is of interest. Instead, only the
functions the op watch has something to do for are wrapped (about 450: copies between
devices, host reads, in-place ops, losses, subtractions, dropout, softmax, the layer functions
and the ways of leaving autograd, see ``opwatch``); every other call runs as it would without
gradscope. A wrapper costs a Python call (~0.5 us) and passes straight through:

- while torch.compile traces (``is_dynamo_compiling()`` first: the compiled graph gets none of
  our code),
- on a thread with no open capture, or while torch-function handling is off (our own
  bookkeeping runs so, as do C++ extensions that disable it),
- inside another wrapped call (``F.softmax`` calls ``Tensor.softmax``, ``F.relu(inplace=True)``
  calls ``torch.relu_``): like a mode, which is off while it handles a call, the op watch sees
  the outer call only.

Two properties of ``torch.Tensor`` are wrapped too: reading ``.data`` (history left behind) and
setting ``.requires_grad`` (switched on). Reading ``.requires_grad`` stays torch's own C getter.

Everything is put back when the last capture closes, also on errors (``SharedPatches``); an
attribute someone else replaced after us is left as it is, with our wrapper under it passing
through.
"""
from __future__ import annotations

import inspect
import sys
import threading
from typing import Any, Callable, Optional

import torch
from torch.nn import functional as F

from .patches import SharedPatches

_get_ident = threading.get_ident
# (constant-folded to True while torch.compile traces; 78 ns against is_compiling's 175)
_compiling = torch.compiler.is_dynamo_compiling
_tf_enabled = torch._C._is_torch_function_enabled
_no_tf = torch._C.DisableTorchFunction


class _ThreadWatches:
    """The op watches open on one thread, and whether a wrapped call is running there."""

    __slots__ = ("watches", "depth")

    def __init__(self) -> None:
        self.watches: list = []
        self.depth = 0


_STATE: dict = {}  # thread ident -> _ThreadWatches


def _handled(state: _ThreadWatches, name: str, original: Callable, args: tuple, kwargs: dict,
             inplace: bool, frame: Any) -> Any:
    """A call of interest: each watch looks before and after; the call itself runs once."""
    watches = list(state.watches)
    with _no_tf():  # (our reads of the tensors are not the program's torch calls)
        tokens = [w.before(name, args, kwargs, inplace, frame) for w in watches]
    state.depth += 1
    try:
        result = original(*args, **kwargs)
    finally:
        state.depth -= 1
    with _no_tf():
        for w, token in zip(watches, tokens):
            w.after(name, original, args, kwargs, inplace, result, token)
    return result


# Layer functions: run while no forward is, they come from a module's forward called directly
# (``model.head.forward(x)``), which no module hook sees (directcall.py attributes them).
LAYER_FUNCS = frozenset((
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "embedding", "embedding_bag", "layer_norm", "group_norm", "batch_norm",
    "instance_norm", "rms_norm", "lstm", "gru", "rnn_tanh", "rnn_relu",
    "multi_head_attention_forward", "prelu"))
# Operators that torch hands to a mode under their function's name (``y - x`` is ``sub``,
# ``y += 1`` is ``add_``): the op watch's records keep those names.
_REPORTED_AS = {"__sub__": "sub", "__gt__": "gt", "__lt__": "lt", "__ge__": "ge", "__le__": "le",
                "__ne__": "ne", "__iadd__": "add_", "__isub__": "sub_", "__imul__": "mul_",
                "__itruediv__": "div_", "__ifloordiv__": "floor_divide_",
                "__imod__": "remainder_", "__ipow__": "pow_"}


def _wrap(name: str, original: Callable, at: Optional[int] = None) -> Callable:
    """A function of interest by its name; ``at``: the position of its ``inplace``
    parameter, if it has one (``F.dropout(x, 0.5, True, True)``)."""
    if name in LAYER_FUNCS:
        return _wrap_layer(name, original)
    op = _wrap_named(_REPORTED_AS.get(name, name), original, at)
    op.__name__ = getattr(original, "__name__", name)
    return op


def _wrap_named(name: str, original: Callable, at: Optional[int]) -> Callable:
    def op(*args: Any, **kwargs: Any) -> Any:
        if _compiling():
            return original(*args, **kwargs)
        state = _STATE.get(_get_ident())
        if state is None or state.depth or not _tf_enabled():
            return original(*args, **kwargs)
        inplace = at is not None and kwargs.get(
            "inplace", args[at] if len(args) > at else False) is True
        return _handled(state, name, original, args, kwargs, inplace, sys._getframe(1))
    return _mark(op, original)


def _wrap_layer(name: str, original: Callable, at: Optional[int] = None) -> Callable:
    """A layer function (``F.linear``, ``F.conv2d``, ...): of interest only when no module's
    forward that is running called it (a submodule's forward called directly). Called from
    the running module's own forward, the usual, it passes through after one comparison."""
    def op(*args: Any, **kwargs: Any) -> Any:
        if _compiling():
            return original(*args, **kwargs)
        state = _STATE.get(_get_ident())
        if state is None or state.depth or not _tf_enabled():
            return original(*args, **kwargs)
        frame = sys._getframe(1)
        for watch in state.watches:
            if not watch.own_forward(frame):
                return _handled(state, name, original, args, kwargs, False, frame)
        return original(*args, **kwargs)
    return _mark(op, original)


def _wrap_inplace_arg(name: str, original: Callable, at: int) -> Callable:
    """A function with an ``inplace`` parameter (``F.relu(x, inplace=True)``): of interest
    only when it is true; otherwise the cheapest pass-through of all."""
    def op(*args: Any, **kwargs: Any) -> Any:
        inplace = kwargs.get("inplace", args[at] if len(args) > at else False)
        if inplace is not True or _compiling():
            return original(*args, **kwargs)
        state = _STATE.get(_get_ident())
        if state is None or state.depth or not _tf_enabled():
            return original(*args, **kwargs)
        return _handled(state, name, original, args, kwargs, True, sys._getframe(1))
    return _mark(op, original)


def _mark(op: Callable, original: Callable) -> Callable:
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(op, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    op.__gradscope_wraps__ = original  # type: ignore[attr-defined]
    return op


def _noted(name: str, func: Any, args: tuple) -> None:
    """A property get/set of interest (``.data``, ``.requires_grad = ...``): the watches note
    it as the op watch notes ``__get__``/``__set__`` calls."""
    state = _STATE.get(_get_ident())
    if state is None or state.depth or not _tf_enabled():
        return
    with _no_tf():
        for w in list(state.watches):
            w.after(name, func, args, {}, False, None, None)


def _data_property(original: Any) -> property:
    getter = original.__get__

    def get(self: torch.Tensor) -> Any:
        value = getter(self, type(self))
        if not _compiling():
            _noted("__get__", getter, (self,))
        return value

    def set_(self: torch.Tensor, value: Any) -> None:
        original.__set__(self, value)
    return property(get, set_, doc=original.__doc__)


def _requires_grad_property(original: Any) -> property:
    setter = original.__set__

    def set_(self: torch.Tensor, value: Any) -> None:
        if not _compiling():
            _noted("__set__", setter, (self, value))
        setter(self, value)
    # reading stays torch's C getter (called by property without a Python frame)
    return property(original.__get__, set_, doc=original.__doc__)


# -- what is wrapped ---------------------------------------------------------------------------
_VF_FUNCTIONS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# Trailing underscore, yet no data is written (as in opwatch._NOT_INPLACE)
_NOT_INPLACE = {"requires_grad_", "retain_grad", "share_memory_", "record_stream",
                "pin_memory"}


def _inplace_names(owner: Any, private: bool) -> list:
    names = []
    for name in dir(owner):
        if not name.endswith("_") or name.startswith("__") or name in _NOT_INPLACE \
                or (not private and name.startswith("_")) or "__" in name.strip("_"):
            continue
        if callable(getattr(owner, name, None)) and not isinstance(getattr(owner, name), type):
            names.append(name)
    return names


def _inplace_parameter(fn: Any) -> Optional[int]:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def _names_of_interest() -> list:
    """Every name the op watch has something to do for (``opwatch``'s sets), as a torch
    function or method, plus the operators torch reports under one of them."""
    from . import opwatch as ow

    names = set().union(ow._LAYER_FUNCS, ow._COPY_METHODS, ow._HOST_READS, ow._FACTORIES,
                        ow._LOSSES, ow._SUBTRACTIONS, ow._SHAPE_LOSSES, ow._HISTORY_NAMES,
                        ow._ITERATIONS,
                        ow._INPLACE_DUNDERS, _REPORTED_AS)
    # (iterating a tensor reaches the op watch as its unbind call, as a mode sees it)
    return sorted(names - {"__get__", "__set__", "__iter__"})


def targets() -> list:
    """``(owner, attribute, make wrapper)`` for everything the op watch wraps."""
    out: list = []
    interest = _names_of_interest()
    vf = getattr(torch, "_VF", None)
    for owner, private in ((torch.Tensor, True), (torch, True), (F, False)):
        names = dict.fromkeys(interest + _inplace_names(owner, private))
        for name in names:
            if name.startswith("__") and owner is not torch.Tensor:
                continue  # operators are the tensor's (a module's __eq__ is the module's)
            fn = getattr(owner, name, None)
            if fn is None or not callable(fn) or isinstance(fn, type):
                continue
            at = _inplace_parameter(fn) if owner is F else None
            out.append((owner, name, lambda n, o, at=at: _wrap(n, o, at)))
    chosen = {name for owner, name, _ in out if owner is F}
    for name in dir(F):
        fn = getattr(F, name)
        if name.startswith("_") or name in chosen or not callable(fn) or isinstance(fn, type):
            continue
        at = _inplace_parameter(fn)
        if at is not None:  # of interest only with inplace=True (relu, elu, hardtanh, ...)
            out.append((F, name, lambda n, o, at=at: _wrap_inplace_arg(n, o, at)))
    for name in _VF_FUNCTIONS:
        if vf is not None and hasattr(vf, name):
            out.append((vf, name, _wrap))
    return out


class _OpPatches(SharedPatches):
    """Installed with the first open op watch, removed with the last (``add``/``remove``
    take the op watch)."""

    def __init__(self) -> None:
        super().__init__()
        self.installed: list = []  # (owner, name, had its own attribute, original, wrapper)
        self._targets: Optional[list] = None
        self._made: dict = {}      # (id(owner), name) -> its wrapper, made once

    def add(self, watch: Any) -> None:
        super().add(watch)
        with self.lock:
            _STATE.setdefault(watch.thread, _ThreadWatches()).watches.append(watch)

    def remove(self, watch: Any) -> None:
        with self.lock:
            state = _STATE.get(watch.thread)
            if state is not None and watch in state.watches:
                state.watches.remove(watch)
                if not state.watches:
                    del _STATE[watch.thread]
        super().remove(watch)

    def _open(self) -> list:  # (SharedPatches' is for captures; watches have no state)
        return list(self.captures)

    def _install(self) -> None:
        if self._targets is None:  # (dir() of torch and inspect.signature: once a process)
            self._targets = targets()
        made = self._made
        for owner, name, make in self._targets:
            own = name in vars(owner)
            original = vars(owner)[name] if own else getattr(owner, name)
            if getattr(original, "__gradscope_wraps__", None) is not None \
                    or isinstance(original, (staticmethod, classmethod)):
                continue  # never a wrapper of a wrapper; no static or class methods
            key = (id(owner), name)
            wrapper = made.get(key)
            if wrapper is None or wrapper.__gradscope_wraps__ is not original:
                wrapper = made[key] = make(name, original)  # (made again if torch's changed)
            setattr(owner, name, wrapper)
            self.installed.append((owner, name, own, original, wrapper))
        for name, make in (("data", _data_property), ("requires_grad", _requires_grad_property)):
            original = getattr(torch.Tensor, name)  # the C descriptor (on TensorBase)
            own = name in vars(torch.Tensor)
            wrapper = make(original)
            setattr(torch.Tensor, name, wrapper)
            self.installed.append((torch.Tensor, name, own, vars(torch.Tensor).get(name)
                                   if own else original, wrapper))

    def _uninstall(self) -> None:
        installed, self.installed = self.installed, []
        for owner, name, own, original, wrapper in reversed(installed):
            if vars(owner).get(name) is not wrapper:
                continue  # replaced after us: theirs stays (ours passes through under it)
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


OP_PATCHES = _OpPatches()
