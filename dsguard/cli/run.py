"""`dsguard webhook` and `dsguard guard`: the long-running processes. Options only; the wiring is
webhook.main and guard.main."""

from __future__ import annotations

import asyncio
import logging

import click

from dsguard.cli import exits
from dsguard.cli.options import (
    DURATION,
    kubeconfig_opt,
    log_format_opt,
    log_level_opt,
    policy_files_opt,
    setup_logging,
)
from dsguard.documents import InputError, PolicySet, load_nodes, load_policies
from dsguard.policy import Policy

MIN_AUDIT_RESYNC = 10.0

log = logging.getLogger("dsguard.cli")


@click.command()
@click.option(
    "--tls-cert-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM serving certificate (chain).",
)
@click.option(
    "--tls-private-key-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM private key.",
)
@click.option("--port", default=8443, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")  # noqa: S104 - a pod serves on its pod IP
@policy_files_opt
@kubeconfig_opt
@click.option(
    "--nodes",
    "node_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Serve with these Nodes instead of watching the cluster (with --policy-file: no cluster needed).",
)
@click.option("--kubernetes-version", default=None, help="With --nodes: the apiserver version to assume.")
@click.option(
    "--exempt-user",
    "exempt_users",
    multiple=True,
    help="A user whose DaemonSet changes pass unjudged: the guard's service account, e.g. "
    "system:serviceaccount:dsguard:dsguard-guard (repeatable).",
)
@click.option(
    "--max-connections",
    default=500,
    show_default=True,
    type=click.IntRange(1),
    help="Connections at once, TLS handshakes in progress included; more are closed at once.",
)
@click.option(
    "--max-connections-per-client",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Connections at once from one IP address (an apiserver needs a few dozen at most).",
)
@click.option(
    "--tls-handshake-timeout", default="10s", show_default=True, type=DURATION,
    help="A TLS handshake not finished in this time is dropped.",
)  # fmt: skip
@click.option(
    "--read-header-timeout", default="10s", show_default=True, type=DURATION,
    help="A request head must arrive within this time of its first byte (slowloris).",
)  # fmt: skip
@click.option(
    "--read-timeout", default="10s", show_default=True, type=DURATION,
    help="A request body must arrive within this time of its head.",
)  # fmt: skip
@click.option(
    "--idle-timeout", default="120s", show_default=True, type=DURATION,
    help="A keep-alive connection idle this long is closed (keep it above the apiserver's 90s).",
)  # fmt: skip
@log_level_opt
@log_format_opt
def webhook(
    tls_cert_file: str,
    tls_private_key_file: str,
    port: int,
    host: str,
    policy_files: tuple[str, ...],
    kubeconfig: str | None,
    node_files: tuple[str, ...],
    kubernetes_version: str | None,
    exempt_users: tuple[str, ...],
    max_connections: int,
    max_connections_per_client: int,
    tls_handshake_timeout: float,
    read_header_timeout: float,
    read_timeout: float,
    idle_timeout: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run the admission webhook (HTTPS: /mutate, /validate, /healthz, /readyz, /metrics)."""
    from dsguard.kube import ClientConfigError
    from webhook.connections import ConnectionLimits
    from webhook.main import run_webhook
    from webhook.tls import ServingFileError

    policy_set = _policies(policy_files)
    try:
        nodes = load_nodes(list(node_files)) if node_files else None
    except InputError as e:
        raise exits.bad_file("--nodes", e, fix=exits.FIX_NODES_FILE) from None
    if nodes is not None and policy_set is None:
        raise click.UsageError(
            "--nodes needs --policy-file: without a cluster there are no policies to watch"
        )
    setup_logging(log_level, log_format)
    policies = _log_policies(policy_set)
    try:
        asyncio.run(
            run_webhook(
                tls_cert_file=tls_cert_file, tls_private_key_file=tls_private_key_file, host=host, port=port,
                kubeconfig=kubeconfig, policies=policies, nodes=nodes, kubernetes_version=kubernetes_version,
                exempt_users=frozenset(exempt_users),
                limits=ConnectionLimits(
                    max_connections=max_connections, max_connections_per_client=max_connections_per_client,
                    tls_handshake_timeout=tls_handshake_timeout,
                    read_header_timeout=read_header_timeout, read_timeout=read_timeout,
                    idle_timeout=idle_timeout,
                ),
            )
        )  # fmt: skip
    except ServingFileError as e:
        flag = "--tls-cert-file" if e.which == "cert" else "--tls-private-key-file"
        raise exits.BadInput(f"{flag} {e.path}: {e.problem}", fix=e.fix) from None
    except ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=False) from None


def _policies(policy_files: tuple[str, ...]) -> PolicySet | None:
    """--policy-file's policies (None: watch the cluster's); a bad file is exit 2, one line."""
    try:
        return load_policies(list(policy_files)) if policy_files else None
    except InputError as e:
        raise exits.bad_file("--policy-file", e, fix=exits.FIX_POLICY_FILE) from None


def _log_policies(policy_set: PolicySet | None) -> list[Policy] | None:
    """Said once logging is set up (a JSON log stays one object per line)."""
    if policy_set is None:
        return None
    log.info(
        "%d DaemonSetPolicy(ies) from --policy-file%s",
        len(policy_set.policies),
        f"; {policy_set.skipped_note()}" if policy_set.skipped else "",
    )
    return policy_set.policies


@click.command()
@kubeconfig_opt
@policy_files_opt
@click.option(
    "--lease-namespace", default="dsguard", show_default=True, help="Namespace of the leader-election Lease."
)
@click.option("--lease-name", default="dsguard-guard", show_default=True)
@click.option(
    "--lease-duration",
    default=15.0,
    show_default=True,
    type=click.FloatRange(3, 600),
    help="Seconds before a silent leader's lease can be taken over.",
)
@click.option("--no-leader-election", is_flag=True, help="Act without a Lease (a single replica only).")
@click.option("--identity", default=None, help="Leader-election identity; default $POD_NAME or host-pid.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address for /healthz, /readyz, /metrics.")  # noqa: S104
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--tick",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 60),
    help="Seconds between re-checks of rollouts in progress (deadlines pass without events).",
)
@click.option(
    "--audit/--no-audit",
    default=True,
    show_default=True,
    help="Re-judge existing DaemonSets when policies, nodes or DaemonSets change, into each "
    "DaemonSetPolicy's status and Events (needs the cluster's policies, not --policy-file).",
)
@click.option(
    "--audit-resync",
    default="5m",
    show_default=True,
    type=DURATION,
    help="Audit at least this often even when nothing changed; also the least time between two "
    "Events for one changing violation.",
)
@click.option(
    "--policy-reports",
    type=click.Choice(["openreports", "wgpolicy", "none"]),
    default="openreports",
    show_default=True,
    help="The audit's results also as policy reports, one per namespace with governed DaemonSets: "
    "openreports (openreports.io/v1alpha1 Report), wgpolicy (wgpolicyk8s.io/v1alpha2 PolicyReport) "
    "or none. Needs the report CRD in the cluster (docs/audit.md).",
)
@click.option(
    "--policy-report-max-results",
    default=500,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Results listed per report (fail first, then warn, pass; at most 1 MiB of them); the summary "
    "counts them all.",
)
@click.option(
    "--gate-sample-interval",
    default="5s",
    show_default=True,
    type=DURATION,
    help="Wave rollouts' apiserver gate: how often the apiserver's request counter is read. The "
    "baseline is the rate over 12 samples before a rollout, the current rate over the last 6.",
)
@click.option(
    "--extra-ca-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="PEM CA certificates trusted beside the system's for the guard's outbound HTTPS (alert "
    "sinks, Prometheus gates): for sinks behind a private CA.",
)
@log_level_opt
@log_format_opt
def guard(
    kubeconfig: str | None,
    policy_files: tuple[str, ...],
    lease_namespace: str,
    lease_name: str,
    lease_duration: float,
    no_leader_election: bool,
    identity: str | None,
    host: str,
    port: int,
    tick: float,
    audit: bool,
    audit_resync: float,
    policy_reports: str,
    policy_report_max_results: int,
    gate_sample_interval: float,
    extra_ca_file: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the rollout guard: pause or roll back DaemonSet rollouts whose updated pods fail."""
    if not 0.1 <= gate_sample_interval <= 300:
        raise click.BadParameter(
            f"must be from 100ms to 5m (got {gate_sample_interval:g}s)", param_hint="--gate-sample-interval"
        )
    if audit_resync < MIN_AUDIT_RESYNC:
        raise click.BadParameter(
            f"must be at least {MIN_AUDIT_RESYNC:g}s (got {audit_resync:g}s): every resync may write "
            "each DaemonSetPolicy's status; changes are audited at once anyway",
            param_hint="--audit-resync",
        )
    from dsguard.kube import ClientConfigError
    from guard.main import default_identity, run_guard
    from guard.outbound_tls import FIX, ExtraCAError, outbound_ssl_context

    try:  # checked before anything starts: a sink's alerts would fail only when one is due
        outbound_tls = outbound_ssl_context(extra_ca_file)
    except ExtraCAError as e:
        raise exits.BadInput(f"--extra-ca-file: {e}", fix=FIX) from None

    policy_set = _policies(policy_files)
    setup_logging(log_level, log_format)
    policies = _log_policies(policy_set)
    try:
        asyncio.run(
            run_guard(
                kubeconfig=kubeconfig, policies=policies, lease_namespace=lease_namespace,
                lease_name=lease_name, identity=identity or default_identity(), host=host, port=port,
                tick=tick, leader_election=not no_leader_election, lease_duration=lease_duration,
                audit=audit, audit_resync=audit_resync, gate_sample_interval=gate_sample_interval,
                policy_reports=policy_reports, report_max_results=policy_report_max_results,
                outbound_tls=outbound_tls,
            )
        )  # fmt: skip
    except ClientConfigError as e:  # raised before anything runs: the client is built first
        raise exits.bad_kubeconfig(e, context_flag=False) from None
