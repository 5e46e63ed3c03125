"""``gradscope.watch``: the same recording as ``gradscope trace train.py``, around your own loop.

>>> with gradscope.watch(model, optimizer) as scope:
...     for x, y in loader:
...         optimizer.zero_grad()
...         loss_fn(model(x), y).backward()
...         optimizer.step()
>>> scope.report().save("report.svg")

States: ``new`` -> ``open`` (inside ``with``) -> ``closed``. Every hook is removed when the block
ends, also on an exception or Ctrl-C (which propagate unchanged); a closed session cannot be
entered again.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .api import build_report, describe_exception
from .checks import select_checks
from .errors import InputError, SessionClosedError
from .report import Report
from .tracing.capture import Capture
from .tracing.modules import unwrap


class WatchSession:
    """Records every forward, backward and optimizer step while open."""

    def __init__(self, *objects: Any, only: Optional[list] = None,
                 disable: Optional[list] = None, find_nonfinite: bool = False) -> None:
        self._models: list = []
        self._optimizers: list = []
        for obj in objects:
            if isinstance(obj, nn.Module):
                self._models.append(obj)
            elif isinstance(obj, torch.optim.Optimizer):
                self._optimizers.append(obj)
            else:
                raise InputError(
                    f"gradscope.watch takes models (nn.Module) and optimizers "
                    f"(torch.optim.Optimizer), got {type(obj).__name__}. Optimizers created "
                    "inside the block are found on their own.")
        self._checks = select_checks(only, disable)
        self._capture = Capture(mode="watch", intercept_backward=True,
                                find_nonfinite=find_nonfinite)
        self._report: Optional[Report] = None
        self.state = "new"

    def __enter__(self) -> "WatchSession":
        if self.state != "new":
            raise SessionClosedError(
                "this gradscope.watch session is closed: a session records one run. Start a new "
                "one with 'with gradscope.watch(model, optimizer) as scope:'.")
        self.state = "open"
        self._capture.__enter__()
        for model in self._models:
            self._capture.add_model(model)
        for optimizer in self._optimizers:
            self._capture.add_optimizer(optimizer)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.state = "closed"
        run = {"mode": "watch", "target": ", ".join(type(unwrap(m)).__name__ for m in self._models)
               or "watch", "status": "ok"}
        if exc is not None:
            interrupted = isinstance(exc, KeyboardInterrupt)
            run.update(status="interrupted" if interrupted else "error",
                       error=describe_exception(exc))
            self._capture.note_failure(exc)
        try:
            self._report = build_report(self._capture, run, self._checks)
        except Exception as e:  # noqa: BLE001 - a bug of ours must not hide the user's error
            self._capture.close()  # the hooks go in any case
            if exc is None:
                raise
            import warnings

            from .errors import GradscopeWarning

            warnings.warn(f"gradscope could not build its report ({e!r}); your exception "
                          "follows.", GradscopeWarning, stacklevel=2)
        self._models = []
        self._optimizers = []
        return False  # never swallow the user's exception

    def report(self) -> Report:
        """The report of the whole run (after the ``with`` block has ended)."""
        if self._report is None:
            raise SessionClosedError(
                "scope.report() is ready once the 'with gradscope.watch(...)' block has ended; "
                "call it after the block.")
        return self._report


def watch(*objects: Any, only: Optional[list] = None, disable: Optional[list] = None,
          find_nonfinite: bool = False) -> WatchSession:
    """Watch models (and optionally optimizers) for the length of a ``with`` block.

    ``find_nonfinite=True`` hooks every autograd node of each backward (until the first hit) to
    name the op that first produced a NaN/Inf gradient: a diagnostic, slower run.
    """
    return WatchSession(*objects, only=only, disable=disable, find_nonfinite=find_nonfinite)
