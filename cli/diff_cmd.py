"""``gradscope diff A.json B.json``: what changed between two traces; exit 1 on a new finding."""
from __future__ import annotations

from typing import Optional

import click


@click.command("diff")
@click.argument("before", type=click.Path(), metavar="BEFORE")
@click.argument("after", type=click.Path(), metavar="AFTER")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the diff as JSON here ('-': to stdout, instead of the text).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write the diff as one self-contained HTML page here.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info", "never"]),
              default="error", show_default=True,
              help="Exit 1 when a finding at or above this severity is new in AFTER.")
@click.pass_context
def diff_command(ctx: click.Context, before: str, after: str, json_path: Optional[str],
                 html_path: Optional[str], fail_on: str) -> None:
    """Compare two traces of one program (BEFORE, then AFTER): modules, parameters (added,
    removed, frozen, reshaped, no longer reached by the loss), autograd ops and saved
    activations per module, findings new and fixed.

    \b
    gradscope trace model.py:Net --input 8,16 --json before.json
    # ... refactor ...
    gradscope trace model.py:Net --input 8,16 --json after.json
    gradscope diff before.json after.json --fail-on warning   # exit 1: a new finding

    BEFORE and AFTER are trace.json files (or folders holding one). No torch needed.
    """
    from gradscope.diff import DiffInputError, diff_traces, load_trace
    from gradscope.render.diff import render_diff_html, render_diff_text
    from gradscope.tracedata import write_atomically

    traces = []
    for hint, path in (("BEFORE", before), ("AFTER", after)):
        try:
            traces.append(load_trace(path))
        except DiffInputError as e:
            raise click.BadParameter(str(e), param_hint=hint) from None
    d = diff_traces(traces[0], traces[1], before, after)
    if json_path == "-":
        click.echo(d.to_json(), nl=False)
    else:
        click.echo(render_diff_text(d), nl=False)
        if json_path:
            write_atomically(json_path, lambda f: f.write(d.to_json()))
            click.echo(f"wrote {json_path}", err=True)
    if not d.same_program:
        click.echo("gradscope: note: BEFORE and AFTER look like traces of different programs "
                   "(other models or mode); compared anyway.", err=True)
    if html_path:
        text = render_diff_html(d)
        write_atomically(html_path, lambda f: f.write(text))
        click.echo(f"wrote {html_path}", err=True)
    ctx.exit(1 if d.new_at_or_above(fail_on) else 0)
