"""`dsguard resume` and `dsguard rollback`: the guard's actions by hand (guard.manual)."""

from __future__ import annotations

import asyncio

import click

from dsguard.cli.options import kubeconfig_opt


def _split_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise click.BadParameter(f"{ref!r}: expected NAMESPACE/NAME", param_hint="DAEMONSET")
    return namespace, name


def _run_on_daemonset(daemonset: str, kubeconfig: str | None, action: str) -> None:
    from guard import manual

    run = manual.resume_daemonset if action == "resume" else manual.rollback_daemonset
    namespace, name = _split_ref(daemonset)
    try:
        click.echo(asyncio.run(run(namespace, name, kubeconfig=kubeconfig)))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


_daemonset_arg = click.argument("daemonset")


@click.command()
@_daemonset_arg
@kubeconfig_opt
def resume(daemonset: str, kubeconfig: str | None) -> None:
    """Resume a DaemonSet the guard paused (NAMESPACE/NAME): restore its update strategy."""
    _run_on_daemonset(daemonset, kubeconfig, "resume")


@click.command()
@_daemonset_arg
@kubeconfig_opt
def rollback(daemonset: str, kubeconfig: str | None) -> None:
    """Roll a DaemonSet (NAMESPACE/NAME) back to its previous revision, as `kubectl rollout undo` does."""
    _run_on_daemonset(daemonset, kubeconfig, "rollback")
