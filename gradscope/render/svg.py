"""SVG through Graphviz's ``dot`` program (the only module that imports graphviz)."""
from __future__ import annotations

from typing import Optional

from ..errors import GradscopeError, GraphvizNotFound
from ..tracedata import Trace
from .dot import render_dot_for_svg


def render_svg(trace: Trace, depth: Optional[int] = None, max_nodes: Optional[int] = None,
               focus: Optional[str] = None, fold: bool = False) -> str:
    """The drawing as SVG text; a graph over the node budget is collapsed to modules first."""
    return dot_to_svg(render_dot_for_svg(trace, depth, max_nodes, focus, fold))


def dot_to_svg(dot_text: str) -> str:
    import graphviz

    try:
        return graphviz.pipe_string("dot", "svg", dot_text, encoding="utf-8", quiet=True)
    except graphviz.ExecutableNotFound:
        raise GraphvizNotFound() from None
    except graphviz.CalledProcessError as e:
        detail = (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes) \
            else str(e.stderr or "")
        raise GradscopeError(f"Graphviz 'dot' failed to lay out the graph: {detail.strip()[:500]}. "
                             "The DOT and JSON outputs are unaffected.") from None

