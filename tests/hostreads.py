"""Count the host reads that would block the CPU on a GPU, on a machine that has no GPU.

On CUDA, ``torch.cuda.set_sync_debug_mode`` reports every synchronisation (tests/test_cuda.py
uses it). CI has no GPU, so this module counts the same events independently of gradscope's own
bookkeeping: every operation that, were the tensors on a GPU, would have to wait for the device
and copy a value back to the host.

Two layers are needed, because on CPU tensors some reads never reach torch's dispatcher:
- a ``TorchDispatchMode`` sees ``.item()``/``float()``/``bool()`` (``_local_scalar_dense``),
  ``nonzero``, ``equal``, ``masked_select`` and other ops whose output size depends on values;
- wrappers on ``torch.Tensor.tolist/.cpu/.numpy/.to`` see copies to the host, which on a CPU
  tensor are no-ops that dispatch nothing (``.to`` counts only when it targets the CPU);
- wrappers on ``torch.tensor``/``torch.as_tensor`` with a ``device=`` and on
  ``Tensor.new_tensor`` see copies of Python data to a device: on a GPU a blocking
  host-to-device copy (``non_blocking=False``), which also synchronises.

Each read is attributed by the Python stack: ``ours`` when a frame of the ``gradscope`` package
is on it (below any wrapper that only passes the user's own call through: what runs inside
``scaler.step()`` is the user's, even with gradscope's wrapper around it), and ``in_backward``
when autograd was executing a node at the time (a hook).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gradscope
from gradscope.tracing.handles import PASS_THROUGH_CODES

_PACKAGE_DIR = os.path.dirname(os.path.abspath(gradscope.__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep

# Ops that copy a value to the host, or whose output shape depends on the values (so the host
# must wait for the device to know how much memory to allocate).
_BLOCKING_OPS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static",
                 "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                 "unique_consecutive", "repeat_interleave", "bincount", "histc"}

_COPY_OUT_METHODS = ("tolist", "cpu", "numpy")


@dataclass
class HostRead:
    what: str            # the op or method
    ours: bool           # a gradscope frame was on the stack
    in_backward: bool    # autograd was running a node (we were inside a hook)
    where: str           # innermost gradscope frame, else the innermost frame: file:line


@dataclass
class HostReadCounter:
    """Context manager: ``with HostReadCounter() as reads: ...``, then ``reads.ours()``."""

    reads: list = field(default_factory=list)
    _mode: Optional[TorchDispatchMode] = None
    _saved: dict = field(default_factory=dict)
    _factories: dict = field(default_factory=dict)

    def ours(self, in_backward: Optional[bool] = None) -> list:
        return [r for r in self.reads
                if r.ours and (in_backward is None or r.in_backward == in_backward)]

    def _note(self, what: str) -> None:
        innermost = ours_at = None
        f: Any = sys._getframe(1)
        while f is not None and ours_at is None:
            name = f.f_code.co_filename
            if f.f_code in PASS_THROUGH_CODES:
                break  # the user's own call, passed through by a wrapper of ours
            if name.startswith(_PACKAGE_DIR):
                ours_at = f"{os.path.basename(name)}:{f.f_lineno}"
            elif innermost is None and name != __file__ and not name.startswith(_TORCH_DIR):
                innermost = f"{name}:{f.f_lineno}"
            f = f.f_back
        in_backward = torch._C._current_autograd_node() is not None
        self.reads.append(HostRead(what, ours_at is not None, in_backward,
                                   ours_at or innermost))

    def __enter__(self) -> "HostReadCounter":
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ in _BLOCKING_OPS:
                    counter._note(func.overloadpacket.__name__)
                return func(*args, **(kwargs or {}))

        for name in _COPY_OUT_METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap_copy(name, self._saved[name]))
        self._saved["to"] = torch.Tensor.to
        torch.Tensor.to = self._wrap_to(self._saved["to"])
        self._saved["new_tensor"] = torch.Tensor.new_tensor
        torch.Tensor.new_tensor = self._wrap_copy("new_tensor", self._saved["new_tensor"])
        for name in ("tensor", "as_tensor"):
            self._factories[name] = getattr(torch, name)
            setattr(torch, name, self._wrap_factory(name, self._factories[name]))
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        for name, original in self._factories.items():
            setattr(torch, name, original)
        self._saved.clear()
        self._factories.clear()

    def _wrap_factory(self, name: str, original: Any) -> Any:
        counter = self

        def factory(data, *args, **kwargs):
            if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                counter._note(f"{name}(device=)")
            return original(data, *args, **kwargs)
        return factory

    def _wrap_copy(self, name: str, original: Any) -> Any:
        counter = self

        def copy_out(tensor, *args, **kwargs):
            counter._note(name)
            return original(tensor, *args, **kwargs)
        return copy_out

    def _wrap_to(self, original: Any) -> Any:
        counter = self

        def to(tensor, *args, **kwargs):
            target = kwargs.get("device")
            for a in args:
                if isinstance(a, (str, torch.device)):
                    target = a
                elif isinstance(a, torch.Tensor):
                    target = a.device
            if target is not None and torch.device(target).type == "cpu":
                counter._note("to(cpu)")
            return original(tensor, *args, **kwargs)
        return to
