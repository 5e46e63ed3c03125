"""Errors and warnings raised by gradscope.

Every error a user can cause names the input and the fix. The CLI maps the classes to exit codes:
``InputError`` and ``LoadError`` exit 2, ``TracedProgramError`` exits 3.
"""
from __future__ import annotations

from typing import Any


class GradscopeError(RuntimeError):
    """Base class of every error gradscope raises on purpose."""


class InputError(GradscopeError):
    """The user passed something gradscope cannot use (a bad --input spec, a model with no output)."""


class LoadError(GradscopeError):
    """The user's file or ``FILE.py:NAME`` target could not be found, parsed or imported."""


class GraphvizNotFound(GradscopeError):
    """SVG output was asked for but Graphviz's ``dot`` program is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "SVG output needs Graphviz's 'dot' program, which is not on PATH. Install it with "
            "'sudo apt-get install graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS) or "
            "'conda install graphviz', or ask for --dot/--json output, which needs no Graphviz."
        )


class TracedProgramError(GradscopeError):
    """The traced program raised. ``report`` holds everything captured before the failure."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class SessionClosedError(GradscopeError):
    """A capture or watch session that has already been closed was used again."""


class GradscopeWarning(UserWarning):
    """Something gradscope could not observe fully; the report is still written."""
