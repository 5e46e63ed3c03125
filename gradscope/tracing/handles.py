"""One place that owns every hook and patch gradscope installs, so all of them go in one call.

Modelled on torch's ``RemovableHandle``/``_MultiHandle``: ``remove()`` is idempotent, runs in
reverse order of installation (the last hook in is the first out), and never stops half way: an
error while removing one hook is kept and re-raised after all the others are gone.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch

from . import selftime


class CopySafe(functools.partial):
    """A hook of ours put in the hook dict of one of your modules (the light forwards' hooks):
    a copy of that module (``copy.deepcopy(model)`` for the best or EMA weights,
    ``torch.save(model)``, pickling) gets an inert hook in its place, made of the standard
    library only (``sys.audit`` of an event of ours, which returns None, so neither the copy's
    inputs nor its outputs change), where copying the hook itself failed on the session's
    state (a lock). Called, it is the hook itself, with no frame added (a partial)."""

    def __reduce__(self) -> tuple:
        return functools.partial, (sys.audit, "gradscope.inert_hook")

    @property
    def __name__(self) -> str:  # type: ignore[override]
        """The hook's own name, as a hook that is a function has (code reading hook dicts)."""
        return getattr(self.func, "__name__", type(self).__name__)


class HandleGroup:
    """Removable handles and undo callables, removed together (LIFO)."""

    def __init__(self) -> None:
        self._undo: list = []

    def add(self, handle: Any) -> Any:
        """Keep a torch ``RemovableHandle`` (anything with ``remove()``); returns it."""
        self._undo.append(handle.remove)
        return handle

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` at removal time (restoring a patched attribute, say)."""
        self._undo.append(undo)

    def __len__(self) -> int:
        return len(self._undo)

    def remove(self) -> None:
        first_error = None
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as e:  # keep removing the rest; report the first failure
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    def __enter__(self) -> "HandleGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def ours(fn: Callable) -> Callable:
    """Run ``fn`` (a hook or record of ours) with torch-function handling off.

    Under ``gradscope trace`` the op watch's wrappers (``oppatches``) see the program's calls
    of interest; torch-function handling off is how they tell our own bookkeeping's calls
    (``.detach()``, ``.item()``, in-place copies) apart and pass them through.
    """
    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        if selftime.enabled:  # the watch benchmark counts our own time
            return selftime.call(_quiet, (fn,) + args, kwargs)
        with torch._C.DisableTorchFunction():
            return fn(*args, **kwargs)
    return quiet


def _quiet(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    with torch._C.DisableTorchFunction():
        return fn(*args, **kwargs)


def hook_of_ours(fn: Callable) -> Callable:
    """A module hook of ours: quiet like :func:`ours`, and a no-op while torch.compile traces.

    ``is_compiling()`` is a constant to the compiler, so the compiled graph holds none of our
    Python and no graph break: compiled regions are simply not watched (the report says so).
    """
    @functools.wraps(fn)
    def hook(*args: Any, **kwargs: Any) -> Any:
        if selftime.enabled:
            return selftime.call(_quiet_hook, (fn,) + args, kwargs)
        if torch.compiler.is_compiling():
            return None
        with torch._C.DisableTorchFunction():
            return fn(*args, **kwargs)
    return hook


def _quiet_hook(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    if torch.compiler.is_compiling():
        return None
    with torch._C.DisableTorchFunction():
        return fn(*args, **kwargs)


# Code objects of wrappers that only pass the user's own call through (backward, zero_grad,
# clip_grad_norm_, scheduler and GradScaler steps): what runs beneath them is the user's work,
# not ours (tests/hostreads.py attributes device reads by these).
PASS_THROUGH_CODES: set = set()


def pass_through(fn: Callable) -> Callable:
    """Mark a wrapper around the user's own torch call (see PASS_THROUGH_CODES)."""
    PASS_THROUGH_CODES.add(fn.__code__)
    return fn
