"""`dsguard status` (stub: being written)."""

from __future__ import annotations

import click


@click.command("status")
def status() -> None:
    """Rollout and policy state of governed DaemonSets."""
    raise click.ClickException("not implemented yet")
