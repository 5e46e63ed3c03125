"""One wrapper around ``torch.autograd.backward``/``grad`` and the two ``zero_grad`` methods,
shared by every open capture: torch has no hook for "a backward starts" or "zero_grad was
called". Installed with the first capture, removed with the last, in whatever order they close.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Optional

import torch

from .handles import ours, pass_through


def tensors_in(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


class SharedPatches:
    """Wrappers shared by every open capture: installed with the first capture, removed with
    the last, in whatever order they close. Subclasses define ``_install``/``_uninstall``."""

    def __init__(self) -> None:
        self.captures: list = []
        self.lock = threading.Lock()
        self.local = threading.local()

    def add(self, capture: Any) -> None:
        with self.lock:
            if not self.captures:
                self._install()
            self.captures.append(capture)

    def remove(self, capture: Any) -> None:
        with self.lock:
            if capture in self.captures:
                self.captures.remove(capture)
            if not self.captures:
                self._uninstall()

    def _open(self) -> list:
        return [c for c in list(self.captures) if c.state == "open"]

    def _install(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _uninstall(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _Patches(SharedPatches):
    """The shared wrappers (see the module docstring); ``add(capture)`` / ``remove(capture)``.
    A capture receives ``on_backward``, ``on_backward_error``, ``_arm_nonfinite`` and
    ``on_zero_grad``."""

    def __init__(self) -> None:
        super().__init__()  # (self.local: backward calls nested inside a backward are torch's)
        self.installed: Optional[dict] = None
        self.resync_pending = False  # a capture woke during a backward (see steady)

    def _install(self) -> None:
        autograd = torch.autograd
        originals = {"backward": autograd.backward, "grad": autograd.grad,
                     "opt_zero": torch.optim.Optimizer.__dict__["zero_grad"],
                     "mod_zero": torch.nn.Module.__dict__["zero_grad"]}
        patches = self

        @ours
        def enter(roots: Any, kind: str, args: tuple, kwargs: dict, depth: int) -> tuple:
            # torch's own calls: inside a backward (reentrant checkpointing), or AOTAutograd
            # tracing the backward while torch.compile compiles
            nested = depth > 0 or _inside_backward() or torch.compiler.is_compiling()
            armed = []
            after = kind == "backward"  # an after pass wanted (not when every capture is idle)
            if not nested:
                retain = _retains_graph(kind, args, kwargs)
                after = False
                for cap in patches._open():
                    cap.on_backward(roots, kind, retain)
                    if kind == "backward":
                        after = after or cap.steady is None or not cap.steady.idle
                        if cap._arm_nonfinite(roots):
                            armed.append(cap)
            return nested, armed, after

        @ours
        def failed(roots: Any, error: BaseException) -> None:
            for cap in patches._open():
                cap.on_backward_error(roots, error)

        @ours
        def done(kind: str, armed: list) -> None:
            if kind == "backward":
                for cap in patches._open():
                    cap.after_backward()  # which gradients this backward wrote
            for cap in armed:
                cap._guard("the non-finite search", cap.nonfinite.collect)

        @pass_through
        def call(original: Any, roots: Any, kind: str, args: tuple, kwargs: dict) -> Any:
            depth = getattr(patches.local, "depth", 0)
            nested, armed, after = enter(roots, kind, args, kwargs, depth)
            patches.local.depth = depth + 1
            try:
                result = original(roots, *args, **kwargs)
            except RuntimeError as e:
                if not nested:
                    failed(roots, e)
                raise
            finally:
                patches.local.depth = depth
                if not nested:
                    if after:
                        done(kind, [])
                    if patches.resync_pending:  # woken during this backward (see steady)
                        patches.resync_pending = False
                        for cap in patches._open():
                            if cap.steady is not None and cap.steady.resync_pending is not None:
                                cap._guard("the idle steps", cap.steady.finish_resync)
            if armed:
                done("", armed)
            return result

        @pass_through
        @functools.wraps(originals["backward"])
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            return call(originals["backward"], tensors, "backward", args, kwargs)

        @pass_through
        @functools.wraps(originals["grad"])
        def grad(outputs: Any, *args: Any, **kwargs: Any) -> Any:
            return call(originals["grad"], outputs, "grad", args, kwargs)

        @ours
        def zeroing(obj: Any) -> None:
            for cap in patches._open():
                cap.on_zero_grad(obj)

        def zero_grad_of(original: Any) -> Any:
            @pass_through
            @functools.wraps(original)
            def zero_grad(obj: Any, *args: Any, **kwargs: Any) -> Any:
                zeroing(obj)
                return original(obj, *args, **kwargs)
            return zero_grad

        wrappers = {"backward": backward, "grad": grad,
                    "opt_zero": zero_grad_of(originals["opt_zero"]),
                    "mod_zero": zero_grad_of(originals["mod_zero"])}
        autograd.backward, autograd.grad = wrappers["backward"], wrappers["grad"]
        torch.optim.Optimizer.zero_grad = wrappers["opt_zero"]
        torch.nn.Module.zero_grad = wrappers["mod_zero"]
        self.installed = {"originals": originals, "wrappers": wrappers}

    def _uninstall(self) -> None:
        if self.installed is None:
            return
        originals, wrappers = self.installed["originals"], self.installed["wrappers"]
        self.installed = None
        # Only undo our own patches: if someone patched on top of us, theirs stays, and our
        # wrapper under it is a pass-through while no capture is open.
        autograd = torch.autograd
        if autograd.backward is wrappers["backward"]:
            autograd.backward = originals["backward"]
        if autograd.grad is wrappers["grad"]:
            autograd.grad = originals["grad"]
        if torch.optim.Optimizer.__dict__.get("zero_grad") is wrappers["opt_zero"]:
            torch.optim.Optimizer.zero_grad = originals["opt_zero"]
        if torch.nn.Module.__dict__.get("zero_grad") is wrappers["mod_zero"]:
            torch.nn.Module.zero_grad = originals["mod_zero"]


def _retains_graph(kind: str, args: tuple, kwargs: dict) -> bool:
    """Did this backward (or autograd.grad) call ask to keep its graph (``retain_graph=True``,
    or ``create_graph=True``, which implies it)?"""
    at = 1 if kind == "backward" else 2  # backward(t, grad, retain) / grad(out, in, go, retain)
    retain = kwargs.get("retain_graph", args[at] if len(args) > at else None)
    if retain is None:
        retain = kwargs.get("create_graph", args[at + 1] if len(args) > at + 1 else False)
    return bool(retain)


def backward_running() -> bool:
    """Is a backward call running on this thread (ours, through the patched backward, or the
    autograd engine's)?"""
    return getattr(PATCHES.local, "depth", 0) > 0 or _inside_backward()


def _inside_backward() -> bool:
    """True on the autograd engine's threads while it runs a backward (reentrant checkpointing
    calls backward from there, on CUDA from a device thread our thread-local cannot see)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    try:
        return task is not None and task() != -1
    except Exception:  # noqa: BLE001 - an older torch: the thread-local depth still applies
        return False


PATCHES = _Patches()
