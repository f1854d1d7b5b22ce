"""`dsguard status` (also `kubectl dsguard status`): rollout, guard and policy state of governed
DaemonSets, once or live (--watch), and `--until-done` for pipelines. See docs/status.md.

read.py reads the cluster once per refresh, live.py keeps it current with list+watch, render.py
shows a report, loop.py refreshes and decides --until-done; the report itself is built by the pure
dsguard.status_report.
"""

from __future__ import annotations

import asyncio
import sys

import click

from dsguard.cli import exits
from dsguard.cli.options import (
    DURATION,
    all_namespaces_opt,
    context_opt,
    kubeconfig_opt,
    namespace_opt,
    output_opt,
    policy_files_opt,
    resolve_namespace,
)
from dsguard.cli.status.loop import run
from dsguard.cli.status.read import Target
from dsguard.cli.status.render import Printer
from dsguard.documents import InputError, load_policies
from dsguard.policy import Policy


@click.command("status")
@click.argument("name", required=False)
@kubeconfig_opt
@context_opt
@namespace_opt
@all_namespaces_opt
@output_opt("table", "json", "yaml", default="table")
@policy_files_opt
@click.option(
    "-w", "--watch", is_flag=True, help="Keep showing the rollouts as they progress (Ctrl-C to stop)."
)
@click.option(
    "--interval",
    default="2s",
    show_default=True,
    type=DURATION,
    help="With --watch: seconds (or a duration such as 500ms) between reads of the cluster.",
)
@click.option(
    "--until-done",
    is_flag=True,
    help="Watch until every shown rollout is complete (exit 0), or one is paused or rolled back "
    "by the guard (exit 1), as `kubectl rollout status` does. Implies --watch.",
)
@click.option(
    "--timeout",
    default=None,
    type=DURATION,
    help="With --until-done: give up (exit 1) after this long, e.g. 90s or 5m. Default: no limit.",
)
def status(
    name: str | None,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    all_namespaces: bool,
    output: str,
    policy_files: tuple[str, ...],
    watch: bool,
    interval: float,
    until_done: bool,
    timeout: float | None,
) -> None:
    """Rollout, guard and policy state of the governed DaemonSets (or of DaemonSet NAME).

    Per DaemonSet: desired, updated and ready pods, failing pods by reason, whether the rollout
    guard paused or rolled it back (since when, why), and what its DaemonSetPolicies find wrong
    with it. Exit 0; with --until-done 0 when complete, 1 when paused or rolled back or timed out;
    2 on errors (cluster unreachable, forbidden, NAME not found, invalid policy file).
    """
    if interval <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--interval")
    if timeout is not None and not until_done:
        raise click.UsageError("--timeout needs --until-done")
    if timeout is not None and timeout <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--timeout")
    static: tuple[Policy, ...] | None = None
    if policy_files:
        try:
            static = tuple(load_policies(list(policy_files)).policies)
        except InputError as e:
            raise exits.bad_file("--policy-file", e, fix=exits.FIX_POLICY_FILE) from None
    target = Target(
        namespace=resolve_namespace(kubeconfig, context, namespace, all_namespaces),
        name=name,
        static_policies=static,
    )
    watch = watch or until_done
    printer = Printer(output, watch=watch, show_namespace=target.namespace is None, interval=interval)
    try:
        code = asyncio.run(
            run(
                target,
                kubeconfig=kubeconfig,
                context=context,
                printer=printer,
                watch=watch,
                until_done=until_done,
                interval=interval,
                give_up_after=timeout,
            )
        )
    except KeyboardInterrupt:
        code = exits.INTERRUPTED if until_done else exits.OK
    sys.exit(code)
