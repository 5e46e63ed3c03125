"""``gradscope render trace.json``: re-draw a saved report without running anything."""
from __future__ import annotations

from typing import Optional

import click

from .output import drawing_options, resolve_paths, write_outputs


@click.command("render")
@click.argument("trace_json", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Folder for graph.svg and graph.dot.")
@click.option("--dot", "dot_path", type=click.Path(dir_okay=False), help="Write DOT here.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), help="Write SVG here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write HTML here.")
@drawing_options
def render_command(trace_json: str, out: Optional[str], dot_path: Optional[str],
                   svg_path: Optional[str], html_path: Optional[str], depth: Optional[int],
                   focus: Optional[str], fold: bool, max_nodes: int) -> None:
    """Print the summary of a saved trace.json and draw it again (SVG/DOT)."""
    from gradscope.report import Report

    try:
        report = Report.load(trace_json)
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"cannot read {trace_json!r} as a gradscope trace: {e}. Pass "
                                 "a trace.json written by 'gradscope trace'.",
                                 param_hint="TRACE_JSON") from None
    click.echo(report.to_text(), nl=False)
    _, dot_path, svg_path, html_path, required = resolve_paths(out, None, dot_path, svg_path,
                                                               None, html_path)
    problem = write_outputs(report, None, dot_path, svg_path, required, depth, max_nodes,
                            html_path=html_path, focus=focus, fold=fold)
    if problem:  # a usage problem, as in `gradscope trace`: exit 2
        click.echo(f"gradscope: error: {problem}", err=True)
        click.get_current_context().exit(2)
