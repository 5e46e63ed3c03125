"""``gradscope checks``: every check with its id, severity and one-line summary."""
from __future__ import annotations

import click


@click.command("checks")
def checks_command() -> None:
    """List every check gradscope runs (ids work with --only and --disable)."""
    from gradscope.checks import registry

    checks = registry.all_checks()
    if not checks:
        click.echo("no checks are registered")
        return
    width = max(len(c.id) for c in checks)
    for c in checks:
        click.echo(f"{c.id:<{width}}  {c.severity:<7}  {c.summary}")
