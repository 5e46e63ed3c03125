"""``gradscope merge``: one report from the per-rank reports of a distributed run."""
from __future__ import annotations

from typing import Optional

import click

from .output import resolve_paths, write_outputs


@click.command("merge")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False), default="gradscope-report",
              show_default=True, help="Folder for the merged trace.json, graph and report.html.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info", "never"]),
              default="error", show_default=True)
@click.pass_context
def merge_command(ctx: click.Context, inputs: tuple, out: str, fail_on: str) -> None:
    """Merge per-rank trace JSON files (or folders holding rank-*/trace.json) into one report.

    \b
    torchrun --nproc-per-node 2 train.py   # each rank: scope.report().save(f"trace.rank{rank}.json")
    gradscope merge 'trace.rank*.json' --out report/
    """
    from gradscope.merge import rank_files
    from gradscope.report import Report

    files = rank_files(inputs)
    reports = []
    for path in files:
        try:
            reports.append(Report.load(path))
        except (OSError, ValueError) as e:
            raise click.BadParameter(f"cannot read {path!r} as a gradscope trace: {e}",
                                     param_hint="INPUTS") from None
    if not reports:
        raise click.BadParameter(f"no trace JSON found in {', '.join(inputs)}; pass the files "
                                 "each rank wrote, or the folder holding rank-*/trace.json.",
                                 param_hint="INPUTS")
    exit_code = merge_and_write(reports, out, fail_on)
    ctx.exit(exit_code)


def merge_and_write(reports: list, out: str, fail_on: str,
                    expected_ranks: Optional[int] = None) -> int:
    from gradscope.merge import merge_reports

    merged = merge_reports(reports, expected_ranks=expected_ranks)
    json_path, dot_path, svg_path, html_path, _ = resolve_paths(out, None, None, None, None)
    write_outputs(merged, json_path, dot_path, svg_path, False, None, 3000, None, html_path)
    click.echo(merged.to_text(), nl=False)
    run = merged.trace.run
    if run.get("failed_ranks") or run.get("missing_ranks"):
        failed = sorted(set(run.get("failed_ranks", [])) | set(run.get("missing_ranks", [])))
        click.echo(f"gradscope: rank(s) {', '.join(map(str, failed))} failed: "
                   f"{run.get('error') or 'no report written'}", err=True)
        return 130 if run.get("status") == "interrupted" else 3
    return 1 if merged.findings_at_or_above(fail_on) else 0
