"""`dsguard resume`, `rollback`, `pause` and `promote`: the guard's actions by hand (guard.manual)."""

from __future__ import annotations

import asyncio

import click

from dsguard.cli import exits
from dsguard.cli.options import kubeconfig_opt


def _split_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise click.BadParameter(f"{ref!r}: expected NAMESPACE/NAME", param_hint="DAEMONSET")
    return namespace, name


def _run_on_daemonset(daemonset: str, kubeconfig: str | None, action: str) -> None:
    """Exit 0 when done (or nothing to do); 2 when it can't be done: not found, not paused, no
    previous revision, refused by the apiserver, or no cluster to ask."""
    import aiohttp

    from dsguard.kube import ClientConfigError
    from guard import manual

    run = {
        "resume": manual.resume_daemonset,
        "rollback": manual.rollback_daemonset,
        "pause": manual.pause_daemonset,
        "promote": manual.promote_daemonset,
    }[action]
    namespace, name = _split_ref(daemonset)
    try:
        click.echo(asyncio.run(run(namespace, name, kubeconfig=kubeconfig)))
    except ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=False) from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        detail = f"{type(e).__name__}: {e or 'no answer in time'}"
        raise exits.BadInput(f"cannot reach the apiserver: {detail}", fix=exits.FIX_UNREACHABLE) from None
    except ValueError as e:
        raise exits.BadInput(str(e)) from None


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


@click.command()
@_daemonset_arg
@kubeconfig_opt
def pause(daemonset: str, kubeconfig: str | None) -> None:
    """Pause a DaemonSet's rollout (NAMESPACE/NAME), which `kubectl rollout pause` can't: switch it
    to OnDelete, recorded the guard's way; `dsguard resume` continues it."""
    _run_on_daemonset(daemonset, kubeconfig, "pause")


@click.command()
@_daemonset_arg
@kubeconfig_opt
def promote(daemonset: str, kubeconfig: str | None) -> None:
    """Approve the next wave of a DaemonSet's wave rollout (NAMESPACE/NAME), or end its bake early."""
    _run_on_daemonset(daemonset, kubeconfig, "promote")
