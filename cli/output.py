"""Writing a report to the paths the user asked for (shared by `trace` and `render`)."""
from __future__ import annotations

import os
from typing import Callable, Optional

import click

from gradscope.errors import GradscopeError, GraphvizNotFound
from gradscope.report import Report
from gradscope.tracedata import write_atomically


def drawing_options(command: Callable) -> Callable:
    """The options that shape a drawing, shared by `trace` and `render`."""
    options = [
        click.option("--depth", type=click.IntRange(min=0),
                     help="Draw modules below this depth as single boxes (0: one box per "
                          "model)."),
        click.option("--focus", metavar="MODULE",
                     help="Draw only this module's nodes (e.g. layer1 or model.layer1) and "
                          "their neighbours."),
        click.option("--fold", is_flag=True,
                     help="Draw repeated identical blocks (blocks.0 ... blocks.11) once, the "
                          "rest as one box marked xN."),
        click.option("--max-nodes", type=click.IntRange(min=10), default=3000,
                     show_default=True,
                     help="Drawing budget: a bigger graph is drawn collapsed to modules."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_paths(out: Optional[str], json_path: Optional[str], dot_path: Optional[str],
                  svg_path: Optional[str], default_out: Optional[str],
                  html_path: Optional[str] = None) -> tuple:
    """(json, dot, svg, html, svg_required): --out DIR fills in what was not given explicitly."""
    svg_required = svg_path is not None
    if out is None and not (json_path or dot_path or svg_path or html_path):
        out = default_out
    if out is not None:
        json_path = json_path or os.path.join(out, "trace.json")
        dot_path = dot_path or os.path.join(out, "graph.dot")
        svg_path = svg_path or os.path.join(out, "graph.svg")
        html_path = html_path or os.path.join(out, "report.html")
    return json_path, dot_path, svg_path, html_path, svg_required


def write_outputs(report: Report, json_path: Optional[str], dot_path: Optional[str],
                  svg_path: Optional[str], svg_required: bool, depth: Optional[int],
                  max_nodes: int, gradflow_path: Optional[str] = None,
                  html_path: Optional[str] = None, focus: Optional[str] = None,
                  fold: bool = False) -> Optional[str]:
    """Write JSON, DOT and SVG (in that order, so the cheap complete formats land first).

    Returns an error message when a *required* SVG could not be drawn, else None; an SVG that
    was only implied by --out is skipped with a note.
    """
    written = []
    problem = None
    if json_path:
        report.save(json_path, format="json")
        written.append(json_path)
    if focus and (dot_path or svg_path or html_path):
        try:  # once, before any drawing: an unknown module is the user's to fix (exit 2)
            report.to_dot(depth=depth, focus=focus)
        except GradscopeError as e:
            problem, focus = str(e), None  # the drawings are still written, whole
    if dot_path:
        text = report.to_dot(depth=depth, focus=focus, fold=fold)
        write_atomically(dot_path, lambda f: f.write(text))
        written.append(dot_path)
    chart = report.to_gradflow_svg() if gradflow_path else None
    if chart is not None:
        write_atomically(gradflow_path, lambda f: f.write(chart))
        written.append(gradflow_path)
    if svg_path:
        try:
            text = report.to_svg(depth=depth, max_nodes=max_nodes, focus=focus, fold=fold)
            write_atomically(svg_path, lambda f: f.write(text))
            written.append(svg_path)
        except GradscopeError as e:
            if svg_required or not isinstance(e, GraphvizNotFound):
                problem = problem or str(e)
            else:
                click.echo(f"gradscope: SVG skipped: {e}", err=True)
    if html_path:
        # Without Graphviz the page still has findings and tables, and says why the graph is
        # missing.
        text = report.to_html(depth=depth, max_nodes=max_nodes, focus=focus, fold=fold)
        write_atomically(html_path, lambda f: f.write(text))
        written.append(html_path)
    for path in written:
        click.echo(f"wrote {path}", err=True)
    return problem
