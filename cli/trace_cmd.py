"""``gradscope trace``: run a script or build ``FILE.py:NAME`` under gradscope and report."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Optional

import click

from .output import drawing_options, resolve_paths, write_outputs

DEFAULT_OUT = "gradscope-report"
EXIT_FINDINGS, EXIT_USAGE, EXIT_PROGRAM, EXIT_INTERNAL, EXIT_INTERRUPT = 1, 2, 3, 4, 130


def _split_ids(value: Optional[str]) -> list:
    return [s.strip() for s in (value or "").split(",") if s.strip()]


@click.command("trace", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--input", "inputs", multiple=True, metavar="SHAPE[:DTYPE[:HIGH]]",
              help="FILE.py:NAME only: one per forward() argument, e.g. 8,3,32,32 or "
                   "4,128:long (token ids, kept below the model's smallest Embedding size).")
@click.option("--out", type=click.Path(file_okay=False),
              help=f"Folder for trace.json, graph.dot, graph.svg, report.html (and gradflow.svg) "
                   f"[default: {DEFAULT_OUT}/ when no --json/--dot/--svg/--html is given].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
@click.option("--dot", "dot_path", type=click.Path(dir_okay=False), help="Write DOT here.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False),
              help="Write SVG here (needs Graphviz's dot).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write the self-contained HTML report here.")
@drawing_options
@click.option("--fail-on", type=click.Choice(["error", "warning", "info", "never"]),
              default="error", show_default=True,
              help="Exit 1 when a finding of this severity or worse is found.")
@click.option("--only", metavar="CHECK[,CHECK]", help="Run only these checks.")
@click.option("--disable", metavar="CHECK[,CHECK]", help="Skip these checks.")
@click.option("--device", metavar="DEVICE",
              help="FILE.py:NAME only: move the model and inputs there (cpu, cuda, cuda:1).")
@click.option("--find-nonfinite", is_flag=True,
              help="Scripts: hook every autograd node to name the op that first produces a "
                   "NaN/Inf gradient (a slower, diagnostic run).")
@click.option("--nproc-per-node", type=click.IntRange(min=1), metavar="N",
              help="Scripts: launch N ranks with torchrun (torch.distributed), trace each, and "
                   "merge their reports (OUT/rank-*/ hold the per-rank ones).")
@click.option("--rank-dir", is_flag=True, hidden=True)
@click.option("-q", "--quiet", is_flag=True, help="Print no summary, only errors.")
@click.pass_context
def trace_command(ctx: click.Context, target: str, script_args: tuple, inputs: tuple,
                  out: Optional[str], json_path: Optional[str], dot_path: Optional[str],
                  svg_path: Optional[str], html_path: Optional[str], depth: Optional[int],
                  focus: Optional[str], fold: bool, max_nodes: int, fail_on: str,
                  only: Optional[str], disable: Optional[str], device: Optional[str],
                  find_nonfinite: bool, nproc_per_node: Optional[int], rank_dir: bool,
                  quiet: bool) -> None:
    """Trace TARGET: a script (run as __main__ with SCRIPT_ARGS, after --) or FILE.py:NAME
    (a model class, instance or zero-argument factory; give --input shapes).

    \b
    gradscope trace train.py -- --epochs 1
    gradscope trace model.py:Net --input 8,3,32,32
    gradscope trace lm.py:GPT --input 4,128:long --out report/

    gradscope runs your code as `python` would; trace only code you trust.
    """
    from gradscope.errors import InputError, LoadError
    from gradscope.usercode import parse_input_spec, split_target

    path, name = split_target(target)
    if name is None and (inputs or device):
        raise click.UsageError(f"--input and --device go with FILE.py:NAME, not a script: a "
                               f"script makes its own inputs. Did you mean '{target}:Net'?")
    if name is not None and script_args:
        raise click.UsageError(f"arguments after the target ({' '.join(script_args)}) are passed "
                               "to scripts; FILE.py:NAME takes --input instead.")
    if nproc_per_node:
        if name is not None:
            raise click.UsageError("--nproc-per-node launches a training script; FILE.py:NAME "
                                   "runs one forward/backward in one process.")
        ctx.exit(_launch(ctx, path, script_args, nproc_per_node, out or DEFAULT_OUT, fail_on,
                         only, disable, find_nonfinite))
    if rank_dir:  # one rank of a --nproc-per-node launch: its own folder, flushed as it goes
        out = os.path.join(out or DEFAULT_OUT, f"rank-{os.environ.get('RANK', '0')}")
        json_path = dot_path = svg_path = html_path = None
        _terminate_gracefully()
    for spec in inputs:
        try:
            parse_input_spec(spec)
        except InputError as e:
            raise click.BadParameter(str(e), param_hint="--input") from None
    out_dir = out if out is not None else (
        None if (json_path or dot_path or svg_path or html_path) else DEFAULT_OUT)
    gradflow = os.path.join(out_dir, "gradflow.svg") if out_dir else None
    json_path, dot_path, svg_path, html_path, svg_required = resolve_paths(
        out, json_path, dot_path, svg_path, DEFAULT_OUT, html_path)
    try:
        outcome = _run(path, name, target, script_args, inputs, device,
                       _split_ids(only), _split_ids(disable), find_nonfinite,
                       json_path if rank_dir else None)
    except (LoadError, InputError) as e:
        click.echo(f"gradscope: error: {e}", err=True)
        ctx.exit(EXIT_USAGE)
    report = outcome.report
    # Files first (JSON before the rest), then the summary: whatever breaks or is interrupted
    # later, what was captured is already on disk, and each file is whole or absent.
    try:
        problem = write_outputs(report, json_path, dot_path, svg_path, svg_required, depth,
                                max_nodes, gradflow, html_path, focus, fold)
        if not quiet:
            click.echo(report.to_text(), nl=False)
    except KeyboardInterrupt:
        click.echo("gradscope: interrupted while writing the report; the files listed above "
                   "are complete.", err=True)
        ctx.exit(EXIT_INTERRUPT)
    except OSError as e:
        click.echo(f"gradscope: error: cannot write the report: {e}", err=True)
        ctx.exit(EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 - a bug of ours: say so, keep what was written
        click.echo(f"gradscope: internal error while writing the report: {e!r}. The files "
                   "listed above are complete; please report this with trace.json.", err=True)
        ctx.exit(EXIT_INTERNAL)
    if outcome.error is not None:
        ctx.exit(_report_failure(outcome.error, _explained_by(report),
                                 (report.trace.failure or {}).get("location")))
    if problem:
        click.echo(f"gradscope: error: {problem}", err=True)
        ctx.exit(EXIT_USAGE)
    ctx.exit(EXIT_FINDINGS if report.findings_at_or_above(fail_on) else 0)


def _run(path: str, name: Optional[str], target: str, script_args: tuple, inputs: tuple,
         device: Optional[str], only: list, disable: list, find_nonfinite: bool = False,
         flush_to: Optional[str] = None):
    from gradscope.runner import trace_script, trace_target

    if name is None:
        return trace_script(path, script_args, only=only or None, disable=disable or None,
                            find_nonfinite=find_nonfinite, flush_to=flush_to)
    return trace_target(target, inputs, device, only=only or None, disable=disable or None)


def _terminate_gracefully() -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: turn it into the same path
    as Ctrl-C, so the rank's report is written on the way out."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _launch(ctx: click.Context, path: str, script_args: tuple, nproc: int, out: str,
            fail_on: str, only: Optional[str], disable: Optional[str],
            find_nonfinite: bool) -> int:
    """Run the script on N ranks with torchrun, each traced; then merge their reports."""
    import glob
    import shutil
    import subprocess

    from gradscope.report import Report

    from .merge_cmd import merge_and_write

    out = os.path.abspath(out)  # the script may change directory (Hydra does)
    for old in glob.glob(os.path.join(out, "rank-*")):
        shutil.rmtree(old, ignore_errors=True)  # reports of an earlier launch must not mix in
    # --standalone: torchrun picks a free rendezvous port itself (no race with another process)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "gradscope", "trace", path, "--out", out,
           "--rank-dir", "-q", "--fail-on", "never"]
    cmd += [x for flag, v in (("--only", only), ("--disable", disable)) if v for x in (flag, v)]
    cmd += ["--find-nonfinite"] if find_nonfinite else []
    cmd += ["--", *script_args]
    try:
        launched = subprocess.run(cmd)
    except KeyboardInterrupt:
        launched = None
    reports = []
    for file in sorted(glob.glob(os.path.join(out, "rank-*", "trace.json"))):
        try:
            reports.append(Report.load(file))
        except (OSError, ValueError):
            continue  # a rank killed while writing: its temporary file never became trace.json
    returncode = getattr(launched, "returncode", None)
    if not reports:
        click.echo(f"gradscope: no rank wrote a report (torchrun exit code "
                   f"{returncode if returncode is not None else 'interrupted'}).", err=True)
        return EXIT_PROGRAM
    code = merge_and_write(reports, out, fail_on, expected_ranks=nproc)
    if launched is None:
        return EXIT_INTERRUPT
    if returncode != 0 and code in (0, EXIT_FINDINGS):
        click.echo(f"gradscope: torchrun exited with {returncode}: a rank was killed or "
                   "failed outside Python; the merged report holds what the ranks wrote.",
                   err=True)
        return EXIT_PROGRAM
    return code


def _explained_by(report: Any) -> Optional[str]:
    """The id of the finding that explains the program's error (device, CUDA, in-place, a
    loss without history, a graph freed by an earlier backward)."""
    for f in report.findings:
        if f.data.get("explains_failure"):
            return f.check
    failure = report.trace.failure or {}
    kind = {"cuda-unavailable": "device-mismatch"}.get(failure.get("kind"), failure.get("kind"))
    return kind if any(f.check == kind for f in report.findings) else None


def _report_failure(error: BaseException, explained: Optional[str] = None,
                    location: Optional[str] = None) -> int:
    """Print what the user's program raised and pick the exit code."""
    from gradscope.errors import GradscopeError

    if isinstance(error, KeyboardInterrupt):
        click.echo("gradscope: interrupted; the report holds what was captured so far.", err=True)
        return EXIT_INTERRUPT
    if isinstance(error, SystemExit):
        code = error.code
        click.echo(f"gradscope: the script called sys.exit({code!r}); exit code kept.", err=True)
        return code if isinstance(code, int) else 1
    if isinstance(error, GradscopeError):
        click.echo(f"gradscope: error: {error}", err=True)
        return EXIT_USAGE
    if explained:
        # The finding above says what went wrong, where and how to fix it; the error's text
        # is in the JSON report, the full traceback would only repeat it.
        where = f" at {location}" if location else ""
        click.echo(f"gradscope: the traced program stopped with {type(error).__name__}{where}; "
                   f"the {explained} finding above explains it. Exit code {EXIT_PROGRAM}.",
                   err=True)
        return EXIT_PROGRAM
    click.echo("gradscope: the traced program raised (the report above holds everything "
               "captured before the failure):", err=True)
    click.echo(format_user_traceback(error), err=True, nl=False)
    return EXIT_PROGRAM


def format_user_traceback(error: BaseException) -> str:
    """The traceback as Python would print it, minus gradscope's and click's own frames."""
    import gradscope

    ours = (os.path.dirname(gradscope.__file__), os.path.dirname(click.__file__),
            os.path.dirname(__file__))
    # Our frames anywhere in the stack (the runner at the top, a hook or the op watcher in the
    # middle) are not the user's business: the traceback reads as if python had run the script.
    top = traceback.TracebackException.from_exception(error)
    link, seen = top, set()
    while link is not None and id(link) not in seen:  # the whole chain (raise ... from ...)
        seen.add(id(link))
        link.stack = traceback.StackSummary.from_list(
            [f for f in link.stack if not f.filename.startswith(ours)])
        link = link.__cause__ or link.__context__
    return "".join(top.format())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(trace_command())
