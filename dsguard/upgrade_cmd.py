"""`dsguard upgrade-check` (stub: being written)."""

from __future__ import annotations

import click


@click.command("upgrade-check")
def upgrade_check() -> None:
    """DaemonSets whose images break on a target Kubernetes version."""
    raise click.ClickException("not implemented yet")
