"""gradscope: see what autograd does with your model, and catch the bugs that stop it learning.

>>> import gradscope
>>> report = gradscope.trace(model, x)        # forward, loss, backward; hooks removed after
>>> report.findings, report.graph
>>> report.save("graph.svg")
>>> with gradscope.watch(model, optimizer) as scope:   # around a training loop
...     train()
>>> scope.report().save("trace.json")
"""
from typing import Any

from ._version import __version__
from .errors import (GradscopeError, GradscopeWarning, GraphvizNotFound, InputError, LoadError,
                     SessionClosedError, TracedProgramError)
from .findings import Finding
from .graph import Edge, Graph, Node
from .report import Report
from .tracedata import Trace

__all__ = [
    "__version__", "trace", "graph_of", "watch", "Report", "Trace", "Finding", "Graph", "Node", "Edge",
    "GradscopeError", "GradscopeWarning", "GraphvizNotFound", "InputError", "LoadError",
    "SessionClosedError", "TracedProgramError",
]


def __getattr__(name: str) -> Any:
    # trace/graph_of import torch; loading a saved report (Report.load, `gradscope render`)
    # does not, so they are imported on first use.
    if name in ("trace", "graph_of"):
        from . import api

        return getattr(api, name)
    if name == "watch":
        from .session import watch

        return watch
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
