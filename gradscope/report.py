"""Report: a Trace with its findings, and the ways to write it out."""
from __future__ import annotations

import os
from typing import Optional

from .findings import Finding, FindingList, at_or_above
from .graph import Graph
from .tracedata import Trace, write_atomically

FORMATS = {".json": "json", ".dot": "dot", ".gv": "dot", ".svg": "svg", ".txt": "text",
           ".html": "html", ".htm": "html"}


class Report:
    """What one traced run found. ``report.graph``, ``report.findings``, ``report.save(path)``."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    @property
    def graph(self) -> Graph:
        return self.trace.graph

    @property
    def findings(self) -> "FindingList":
        """The findings, most severe first; printed (or shown in a notebook) as readable text."""
        if not isinstance(self.trace.findings, FindingList):
            self.trace.findings = FindingList(self.trace.findings)  # same items, same object after
        return self.trace.findings

    @property
    def failed(self) -> bool:
        """True when the traced program raised (the report holds what came before)."""
        return self.trace.run.get("status") not in (None, "ok")

    def findings_at_or_above(self, severity: str) -> list:
        return at_or_above(self.findings, severity)

    # -- output --------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.trace.to_json()

    def to_dot(self, **options) -> str:
        from .render.dot import render_dot

        return render_dot(self.trace, **options)

    def to_svg(self, **options) -> str:
        from .render.svg import render_svg

        return render_svg(self.trace, **options)

    def to_html(self, **options) -> str:
        """One self-contained HTML page: findings, the graph with pan/zoom, tables, charts."""
        from .render.html import render_html

        return render_html(self.trace, **options)

    def _repr_html_(self) -> str:
        """Jupyter shows the interactive report in the cell: findings, the graph with pan/zoom
        and clicks, the tables. Self-contained (no network); several reports in one notebook
        each sit in their own sandboxed iframe."""
        from .render.html import render_notebook_html

        return render_notebook_html(self.trace)

    def to_gradflow_svg(self) -> Optional[str]:
        """The gradient-flow chart (None when no optimizer step was recorded)."""
        from .render.gradflow import render_gradflow_svg

        return render_gradflow_svg(self.trace)

    def to_text(self, **options) -> str:
        from .render.text import render_text

        return render_text(self.trace, **options)

    def save(self, path: str, format: Optional[str] = None) -> str:
        """Write the report; the format comes from the extension (.json .dot .svg .html .txt) unless
        given. Returns the path. The file appears whole or not at all."""
        fmt = format or FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt is None:
            raise ValueError(
                f"cannot tell the report format of {path!r} from its extension; use one of "
                f"{', '.join(sorted(FORMATS))} or pass format='json'|'dot'|'svg'|'html'|'text'")
        if fmt == "json":
            self.trace.save_json(path)
            return path
        render = {"dot": self.to_dot, "svg": self.to_svg, "text": self.to_text,
                  "html": self.to_html}.get(fmt)
        if render is None:
            raise ValueError(f"unknown report format {fmt!r}; use json, dot, svg, html or text")
        text = render()  # render first: a failed render leaves no empty file behind
        write_atomically(path, lambda f: f.write(text))
        return path

    @classmethod
    def load(cls, path: str) -> "Report":
        """A report saved as JSON, re-rendered without running anything (torch not needed)."""
        return cls(Trace.load(path))

    def __repr__(self) -> str:
        s = self.trace.summary()
        return (f"<gradscope Report: {s['nodes']} nodes, {len(self.trace.modules)} modules, "
                f"{len(self.findings)} findings>")


__all__ = ["Report", "Finding"]
