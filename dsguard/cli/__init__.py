"""The `dsguard` command (also `kubectl dsguard`): the click group; each command is a module of
this package (README, Layout)."""

from __future__ import annotations

import click

from dsguard.cli.certs import certs
from dsguard.cli.check import check
from dsguard.cli.explain import explain
from dsguard.cli.manual import pause, promote, resume, rollback
from dsguard.cli.plan import plan
from dsguard.cli.run import guard, webhook
from dsguard.cli.status import status
from dsguard.cli.upgrade import upgrade_check


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsguard")
def main() -> None:
    """Guardrails for Kubernetes DaemonSets."""


for _command in (
    webhook,
    guard,
    check,
    explain,
    status,
    upgrade_check,
    plan,
    resume,
    rollback,
    pause,
    promote,
    certs,
):
    main.add_command(_command)
