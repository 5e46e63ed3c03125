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
``always_call=True``: the post hook after an ``Exception`` too (with no output), not after a
``KeyboardInterrupt`` (see abandoned.py).

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

Put back when the last trace closes; when the program (or another library) replaced
``_call_impl`` meanwhile, its replacement stays and ours under it passes every call through.
"""
from __future__ import annotations

import sys
import threading
import warnings
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.modules.module as _module

_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_global_backward_pre = _module._global_backward_pre_hooks
_global_backward = _module._global_backward_hooks
_global_forward = _module._global_forward_hooks
_global_forward_pre = _module._global_forward_pre_hooks

_lock = threading.Lock()
_HOOKS: tuple = ()          # ((pre, post), ...) of the open traces, in the order they opened
_torch_call_impl: Callable = nn.Module.__dict__["_call_impl"]  # set again at each install


def _call_impl(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    hooks = _HOOKS
    if _compiling() or not hooks:
        return _torch_call_impl(self, *args, **kwargs)
    if len(hooks) == 1:
        pre, post = hooks[0]
        try:
            pre(self, args)
            if self._forward_pre_hooks or self._forward_hooks or self._backward_hooks \
                    or self._backward_pre_hooks or _global_forward_pre or _global_forward \
                    or _global_backward or _global_backward_pre:
                result = _torch_call_impl(self, *args, **kwargs)
            elif _tracing_state():
                result = self._slow_forward(*args, **kwargs)
            else:
                result = self.forward(*args, **kwargs)
        except Exception:
            _always(post, self, args)
            raise
        post(self, args, result)
        return result
    try:
        for pre, _ in hooks:
            pre(self, args)
        result = _torch_call_impl(self, *args, **kwargs)
    except Exception:
        for _, post in hooks:
            _always(post, self, args)
        raise
    for _, post in hooks:
        post(self, args, result)
    return result


def _always(post: Callable, module: nn.Module, args: tuple) -> None:
    """The post hook after the call raised, as torch runs an always-called hook: an error of
    its own is a warning, the call's error goes on."""
    try:
        post(module, args, None)
    except Exception as e:  # noqa: BLE001 - the forward's own error is the one to raise
        warnings.warn(f"gradscope's module post hook raised {type(e).__name__}: {e} while "
                      "the forward raised another error", stacklevel=3)


CALL_CODE = _call_impl.__code__


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
    global _HOOKS, _torch_call_impl
    pair = (pre, post)
    with _lock:
        if not _HOOKS:
            current = nn.Module.__dict__["_call_impl"]
            if current is not _call_impl:
                _torch_call_impl = current
                nn.Module._call_impl = _call_impl
        _HOOKS = _HOOKS + (pair,)
    return _Handle(pair)


def _uninstall() -> None:
    if nn.Module.__dict__.get("_call_impl") is _call_impl:
        nn.Module._call_impl = _torch_call_impl
    # torch.compile first imported while ours was in took it for torch's own (it keeps the one
    # it found at import to tell whether a module's call can go straight to its forward)
    for name in ("torch._dynamo.utils", "torch._dynamo.variables.nn_module"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "unpatched_nn_module_call_impl", None) is _call_impl:
            mod.unpatched_nn_module_call_impl = _torch_call_impl


def installed() -> bool:
    return bool(_HOOKS)
