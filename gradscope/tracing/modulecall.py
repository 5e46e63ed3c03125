"""Module calls seen from ``nn.Module._call_impl`` instead of two global forward hooks (traces).

A global forward hook, even one that does nothing, takes every module call off torch's fast
path: ``_call_impl`` then builds a closure, looks up the backward hooks, loops over the global
and the module's hook dicts and checks each hook id against the always-called and with-kwargs
sets, about 5 us a call (a 1000-layer MLP's forward: 29 ms plain, 39 ms with two empty global
hooks). A trace watches every module call, so instead it puts its own ``_call_impl`` on
``nn.Module`` for as long as it is open: the tracker's pre hook, then torch's own fast path (the
forward, or ``_slow_forward`` under ``torch.jit.trace``) when the module has no hook of any kind
and no global hook exists, else torch's ``_call_impl`` with every hook as it is; then the post
hook. The same two hook functions as before, called as torch calls a global hook registered with
``always_call=True``: the post hook after an ``Exception`` too (with the arguments the
module's pre-hooks passed on, and the output when a forward hook raised after the forward
returned), not after a ``KeyboardInterrupt`` (see abandoned.py).

What differs from global hooks: the tracker's pre hook runs before every other pre-hook (the
program's global pre-hooks registered before the trace included), and its post hook after
every forward hook (the module's own included, which torch runs after the global ones): a
forward hook that replaces the output gives the replacement, the value the caller gets. Ops
run inside the program's hooks of a module count as that module's.

While torch.compile traces, or AOTAutograd or export runs, the call goes to torch's own
``_call_impl`` first thing (``is_compiling()`` is a constant to the compiler): the compiled
graph holds none of our code, as it held none of the hooks'. A watch (``gradscope.watch``)
keeps the global hooks: it takes them out and puts them back between steps, at times inside a
module call, which a replaced ``_call_impl`` could not follow.

A class with a ``_call_impl`` of its own (``torch.compiler.disable`` on an ``nn.Module``
class wraps torch's, as it was when the class was made) gets ours around its own for as long
as the trace is open. A ``_call_impl`` the program put on ``nn.Module`` before the trace runs
under ours for every call (no fast path then). Put back when the last trace closes; when the
program (or another library) replaced ``_call_impl`` meanwhile, its replacement stays and ours
under it passes every call through (and becomes active again at the next trace, without a
second layer of ours). A patcher that started inside a trace and puts back what it found then
puts ours back: it passes every call through, one frame more per module call until the next
trace ends.
"""
from __future__ import annotations

import inspect
import sys
import threading
import warnings
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.modules.module as _module

from .locations import frame_locals

_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_global_backward_pre = _module._global_backward_pre_hooks
_global_backward = _module._global_backward_hooks
_global_forward = _module._global_forward_hooks
_global_forward_pre = _module._global_forward_pre_hooks

_lock = threading.Lock()
_HOOKS: tuple = ()          # ((pre, post), ...) of the open traces, in the order they opened
_TORCH_FILE = _module.__file__


def _named_torch_call(code: Any) -> bool:
    return code.co_name == "_call_impl" and code.co_filename == _TORCH_FILE


# torch's code object when it is known (the usual: nothing replaced it before gradscope came)
TORCH_CODE = getattr(nn.Module.__dict__["_call_impl"], "__code__", None)
if TORCH_CODE is not None and not _named_torch_call(TORCH_CODE):
    TORCH_CODE = None


def is_torch_call(code: Any) -> bool:
    """Is ``code`` torch's own ``Module._call_impl``? (By its file and name when gradscope
    came after the program replaced it, and its code object is not known.)"""
    return code is TORCH_CODE if TORCH_CODE is not None else _named_torch_call(code)


_torch_call_impl: Callable = nn.Module.__dict__["_call_impl"]  # what ours calls: set at install
_FAST = True                # _torch_call_impl is torch's own: a module without hooks skips it
_displaced = False          # ours is under a replacement the program put on top of it
_classes: dict = {}         # class -> (its own _call_impl, ours around it), while installed


def _call_impl(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    hooks = _HOOKS
    if _compiling() or not hooks:
        return _torch_call_impl(self, *args, **kwargs)
    if len(hooks) == 1:
        pre, post = hooks[0]
        try:
            pre(self, args)
            if not _FAST or self._forward_pre_hooks or self._forward_hooks \
                    or self._backward_hooks or self._backward_pre_hooks or _global_forward_pre \
                    or _global_forward or _global_backward or _global_backward_pre:
                result = _torch_call_impl(self, *args, **kwargs)
            elif _tracing_state():
                result = self._slow_forward(*args, **kwargs)
            else:
                result = self.forward(*args, **kwargs)
        except Exception as e:
            _always(hooks, self, args, e)
            raise
        post(self, args, result)
        return result
    return _each(hooks, _torch_call_impl, self, args, kwargs)


def _each(hooks: tuple, call: Callable, module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Every open trace's pre hook, ``call``, every post hook (in the order they opened)."""
    try:
        for pre, _ in hooks:
            pre(module, args)
        result = call(module, *args, **kwargs)
    except Exception as e:
        _always(hooks, module, args, e)
        raise
    for _, post in hooks:
        post(module, args, result)
    return result


def _class_call(own: Callable) -> Callable:
    """Ours around the ``_call_impl`` a class has of its own."""
    def call_impl(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        hooks = _HOOKS
        if _compiling() or not hooks:
            return own(self, *args, **kwargs)
        return _each(hooks, own, self, args, kwargs)
    call_impl.__gradscope_wraps__ = own  # type: ignore[attr-defined]
    return call_impl


CALL_CODES = (_call_impl.__code__, _class_call(_call_impl).__code__)
EACH_CODE = _each.__code__


def _always(hooks: tuple, module: nn.Module, args: tuple, error: BaseException) -> None:
    """The post hooks after the call raised, as torch runs an always-called global hook: with
    the arguments the module's pre-hooks gave its forward, and the output when the forward
    returned and a forward hook raised (both read from torch's ``_call_impl`` frame, in the
    error's traceback); an error of a post hook is a warning, the call's error goes on."""
    result = None
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if is_torch_call(frame.f_code):
            local = frame_locals(frame)  # (a copy: the frame's own dict keeps no reference)
            if local.get("self") is module:
                args, result = local.get("args", args), local.get("result")
                break
        tb = tb.tb_next
    for _, post in hooks:
        try:
            post(module, args, result)
        except Exception as e:  # noqa: BLE001 - the forward's own error is the one to raise
            warnings.warn(f"gradscope's module post hook raised {type(e).__name__}: {e} "
                          "while the forward raised another error", stacklevel=3)


class _Handle:
    __slots__ = ("pair",)

    def __init__(self, pair: tuple) -> None:
        self.pair = pair

    def remove(self) -> None:
        global _HOOKS
        with _lock:
            if self.pair not in _HOOKS:
                return
            _HOOKS = tuple(p for p in _HOOKS if p is not self.pair)
            if not _HOOKS:
                _uninstall()
        self.pair = None


def install(pre: Callable, post: Callable) -> _Handle:
    """Have every module call go through ``pre(module, args)`` and ``post(module, args,
    output)`` until the handle's ``remove()``."""
    global _HOOKS, _torch_call_impl, _FAST, _displaced
    pair = (pre, post)
    with _lock:
        if not _HOOKS:
            current = nn.Module.__dict__["_call_impl"]
            if current is not _call_impl and not (
                    _displaced and current is not _torch_call_impl and not _is_torch(current)):
                # (still displaced: the replacement on top calls ours, which calls what it
                # called before; another layer of ours would call itself)
                _torch_call_impl = current
                _FAST = _is_torch(current)
                nn.Module._call_impl = _call_impl
            _displaced = False
            _wrap_classes()
        _HOOKS = _HOOKS + (pair,)
    return _Handle(pair)


def _wrap_classes() -> None:
    """Ours around the ``_call_impl`` of every module class that has one of its own."""
    stack, seen = [nn.Module], set()
    while stack:
        for cls in type.__subclasses__(stack.pop()):
            if cls not in seen:
                seen.add(cls)
                stack.append(cls)
                own = cls.__dict__.get("_call_impl")
                if own is not None and not hasattr(own, "__gradscope_wraps__") \
                        and _unwrapped(own) is not _call_impl:
                    wrapper = _class_call(own)
                    _classes[cls] = (own, wrapper)
                    cls._call_impl = wrapper


def _unwrapped(fn: Callable) -> Any:
    """``fn`` without its wrappers (``__wrapped__``): a class made while a trace was open
    wrapped ours (``torch.compiler.disable`` does), which a second layer would run twice."""
    try:
        return inspect.unwrap(fn)
    except ValueError:  # a cycle of __wrapped__
        return fn


def _is_torch(fn: Any) -> bool:
    code = getattr(fn, "__code__", None)
    return code is not None and is_torch_call(code)


def _uninstall() -> None:
    global _displaced
    current = nn.Module.__dict__.get("_call_impl")
    if current is _call_impl:
        nn.Module._call_impl = _torch_call_impl
    else:  # (ours is under what is there, unless that is what ours called, or torch's own)
        _displaced = current is not _torch_call_impl and not _is_torch(current)
    for cls, (own, wrapper) in _classes.items():
        if cls.__dict__.get("_call_impl") is wrapper:
            cls._call_impl = own
    _classes.clear()
    # torch.compile first imported while ours was in took it for torch's own (it keeps the one
    # it found at import to tell whether a module's call can go straight to its forward)
    for name in ("torch._dynamo.utils", "torch._dynamo.variables.nn_module"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "unpatched_nn_module_call_impl", None) is _call_impl:
            mod.unpatched_nn_module_call_impl = _torch_call_impl


def installed() -> bool:
    return bool(_HOOKS)
