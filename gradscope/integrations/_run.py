"""One watch session opened and closed by a trainer's callbacks instead of a ``with`` block.

A framework calls us at "training starts" and "training ends" (or "training failed"); this holds
the :class:`~gradscope.session.WatchSession` between the two, writes the report into a folder
and says what it found. Shared by the Hugging Face and Lightning callbacks.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Iterable, Optional

from ..errors import GradscopeWarning
from ..findings import SEVERITIES
from ..report import Report
from ..tracing.optimizers import unwrap_optimizer


def rank_folder(folder: str) -> str:
    """``folder`` itself, or ``folder/rank-R`` when torch.distributed runs several ranks (each
    writes its own; ``gradscope merge folder`` joins them)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return os.path.join(folder, f"rank-{dist.get_rank()}")
    except Exception:  # noqa: BLE001 - a broken process group: one folder is still right
        pass
    return folder


def write_report(report: Report, folder: str) -> list:
    """``trace.json``, ``report.html`` and ``summary.txt`` in ``folder``; the paths written.

    JSON first: it is the complete record and needs nothing; the HTML page draws the graph with
    Graphviz when it is installed and says so when it is not.
    """
    paths = [os.path.join(folder, name) for name in ("trace.json", "report.html", "summary.txt")]
    report.save(paths[0], format="json")
    report.save(paths[1], format="html")
    report.save(paths[2], format="text")
    return paths


def counts(report: Report) -> dict:
    """``{"findings": N, "error": E, "warning": W, "info": I}``."""
    out = {"findings": len(report.findings)}
    out.update({s: sum(f.severity == s for f in report.findings) for s in SEVERITIES})
    return out


def summary_line(report: Report, where: Optional[str]) -> str:
    """``gradscope: 2 findings (1 error, 1 info) in 2 optimizer steps; report in out/...``."""
    c = counts(report)
    parts = ", ".join(f"{c[s]} {s}" for s in reversed(SEVERITIES) if c[s])
    head = f"gradscope: {c['findings']} finding(s)" + (f" ({parts})" if parts else "")
    head += f" in {report.trace.optimizer_steps} optimizer step(s)"
    if report.findings:
        head += ": " + ", ".join(dict.fromkeys(f.check for f in report.findings))
    return head + (f"; report in {where}" if where else "")


class CallbackRun:
    """The watch session of one training run, driven by ``start`` and ``finish``."""

    def __init__(self, watch_options: dict) -> None:
        self.watch_options = watch_options
        self.session: Any = None
        self.report: Optional[Report] = None
        self.paths: list = []

    @property
    def active(self) -> bool:
        return self.session is not None

    def start(self, models: Iterable[Any], optimizers: Iterable[Any] = ()) -> None:
        """Open a new session on ``models`` (and ``optimizers``, unwrapped)."""
        from ..session import watch

        objects = [m for m in models if m is not None]
        objects += [o for o in map(unwrap_optimizer, optimizers) if o is not None]
        session = watch(*objects, **self.watch_options)
        session.__enter__()
        self.session, self.report, self.paths = session, None, []

    def finish(self, folder: Optional[str], error: Optional[BaseException] = None) -> Optional[Report]:
        """Close the session (every hook goes), then write the report into ``folder``.

        Idempotent: the second call of a run (train end after an exception) does nothing. A
        failure to write is a warning: the user's training already ended, and its own error,
        if any, must reach the user unchanged.
        """
        session, self.session = self.session, None
        if session is None:
            return None
        args = (type(error), error, error.__traceback__) if error is not None else (None,) * 3
        try:
            session.__exit__(*args)
            self.report = session.report()
        except Exception as e:  # noqa: BLE001 - see the docstring; the hooks are gone anyway
            if error is None:
                raise
            warnings.warn(f"gradscope could not build its report ({e!r})", GradscopeWarning,
                          stacklevel=2)
            return None
        if folder is not None:
            try:
                self.paths = write_report(self.report, rank_folder(folder))
            except OSError as e:
                warnings.warn(f"gradscope could not write its report to {folder!r}: {e}. "
                              "Pass out_dir= a writable folder.", GradscopeWarning, stacklevel=2)
        return self.report


class ReportAccess:
    """``callback.report`` and ``callback.paths`` of the callbacks (their ``_run`` is a
    :class:`CallbackRun`)."""

    _run: "CallbackRun"

    @property
    def report(self) -> Any:
        """The report of the last run (None before one has ended)."""
        return self._run.report

    @property
    def paths(self) -> list:
        return list(self._run.paths)
