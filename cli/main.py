"""``gradscope`` — the click front end. Thin: parse options, call the library, choose the exit code.

Exit codes: 0 no findings at or above --fail-on; 1 findings at or above it; 2 usage or loading
error; 3 the traced program raised (the report is still written); 4 gradscope itself failed while
writing the report (files written before are complete); 130 interrupted (Ctrl-C); a script's own
``sys.exit(N)`` keeps its N.
"""
from __future__ import annotations

import warnings

import click

from gradscope._version import __version__

# A torch built without NumPy warns on first use; that noise is not the user's problem here.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

from .checks_cmd import checks_command
from .diff_cmd import diff_command
from .merge_cmd import merge_command
from .render_cmd import render_command
from .trace_cmd import trace_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradscope")
def main() -> None:
    """See what autograd does with your PyTorch model, and catch the bugs that stop it learning.

    gradscope runs your own code, as `python` would: trace only files you would run yourself.
    """


main.add_command(trace_command)
main.add_command(checks_command)
main.add_command(render_command)
main.add_command(merge_command)
main.add_command(diff_command)
