"""The `dsguard` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click
import orjson

from dsguard.documents import InputError, load_documents, load_nodes, load_policies
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo

EXIT_DENIED = 1
EXIT_BAD_INPUT = 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsguard")
def main() -> None:
    """Guardrails for Kubernetes DaemonSets."""


@main.command()
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
@click.option(
    "--policy-file",
    "policy_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Serve these DaemonSetPolicies instead of watching the cluster's (repeatable).",
)
@click.option(
    "--kubeconfig",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Kubeconfig; default $KUBECONFIG, ~/.kube/config, then the in-cluster service account.",
)
@click.option(
    "--nodes",
    "node_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Serve with these Nodes instead of watching the cluster (with --policy-file: no cluster needed).",
)
@click.option("--kubernetes-version", default=None, help="With --nodes: the apiserver version to assume.")
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def webhook(
    tls_cert_file: str,
    tls_private_key_file: str,
    port: int,
    host: str,
    policy_files: tuple[str, ...],
    kubeconfig: str | None,
    node_files: tuple[str, ...],
    kubernetes_version: str | None,
    log_level: str,
) -> None:
    """Run the admission webhook (HTTPS: /mutate, /validate, /healthz, /readyz, /metrics)."""
    _setup_logging(log_level)
    try:
        policies = load_policies(list(policy_files)) if policy_files else None
        nodes = load_nodes(list(node_files)) if node_files else None
    except InputError as e:
        raise click.ClickException(str(e)) from None
    if nodes is not None and policies is None:
        raise click.UsageError(
            "--nodes needs --policy-file: without a cluster there are no policies to watch"
        )
    asyncio.run(
        _run_webhook(
            tls_cert_file, tls_private_key_file, host, port, policies, kubeconfig, nodes, kubernetes_version
        )
    )


async def _run_webhook(
    cert: str,
    key: str,
    host: str,
    port: int,
    policies: list[Policy] | None,
    kubeconfig: str | None,
    nodes: list[NodeInfo] | None,
    kubernetes_version: str | None,
) -> None:
    from certs.tls import CertReloader, server_context
    from dsguard.cluster_cache import ClusterCache
    from dsguard.kube import api_client
    from webhook.server import WebhookState, run

    ctx = server_context(cert, key)
    cache = ClusterCache(static_policies=policies)
    tasks: list[asyncio.Task[None]] = []
    api = None
    if nodes is not None:
        cache.use_static_facts(nodes, kubernetes_version or "")
    else:
        api = await api_client(kubeconfig)
        for reflector in cache.reflectors_for(api):
            tasks.append(asyncio.create_task(reflector.run(), name=f"watch-{reflector.name}"))
        tasks.append(asyncio.create_task(cache.fetch_server_version(api), name="server-version"))
    try:
        await run(
            WebhookState(cache=cache),
            ssl_context=ctx,
            reloader=CertReloader(ctx, cert, key),
            host=host,
            port=port,
            tasks=tasks,
        )
    finally:
        if api is not None:
            await api.close()


@main.command()
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    required=True,
    type=str,
    help="DaemonSetPolicy file or directory (repeatable).",
)
@click.option(
    "--nodes",
    "node_files",
    multiple=True,
    type=str,
    help="Nodes to judge against, e.g. `kubectl get nodes -o yaml` output (repeatable).",
)
@click.option(
    "--kubernetes-version",
    default=None,
    help="The apiserver version, used by version rules when no nodes are given.",
)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.argument("manifests", nargs=-1, required=True)
def check(
    policy_files: tuple[str, ...],
    node_files: tuple[str, ...],
    kubernetes_version: str | None,
    output: str,
    manifests: tuple[str, ...],
) -> None:
    """Judge DaemonSet manifests offline with the webhook's rules (MANIFEST: file, directory or -).

    Exit 0 when all are allowed, 1 when any is denied, 2 on bad input.
    """
    from webhook.rules.engine import evaluate

    try:
        policies = load_policies(list(policy_files))
        nodes = load_nodes(list(node_files)) if node_files else []
        docs = list(load_documents(list(manifests)))
    except InputError as e:
        click.echo(f"dsguard check: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    facts = ClusterFacts(nodes=tuple(nodes), server_version=kubernetes_version)
    results: list[dict[str, Any]] = []
    skipped = 0
    for doc in docs:
        body = doc.body
        if body.get("kind") != "DaemonSet" or not str(body.get("apiVersion", "")).startswith("apps/"):
            skipped += 1
            continue
        ev = evaluate(policies, body, facts=facts, mutate=True)
        results.append(
            {
                "kind": "DaemonSet",
                "namespace": ev.ds.namespace,
                "name": ev.ds.name,
                "source": doc.source,
                "allowed": ev.allowed,
                "policies": list(ev.policies),
                "violations": [
                    {"policy": d.policy, "rule": d.rule, "message": d.message} for d in ev.denials
                ],
                "warnings": [*ev.notices, *ev.warnings],
                "audit": [{"policy": a.policy, "rule": a.rule, "message": a.message} for a in ev.audits],
                "patch": ev.patch,
            }
        )
    if output == "json":
        click.echo(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_text(results, skipped)
    sys.exit(EXIT_DENIED if any(not r["allowed"] for r in results) else 0)


def _print_text(results: list[dict[str, Any]], skipped: int) -> None:
    for r in results:
        verdict = (
            click.style("ALLOWED", fg="green") if r["allowed"] else click.style("DENIED", fg="red", bold=True)
        )
        click.echo(f"{verdict} DaemonSet {r['namespace']}/{r['name']} ({r['source']})")
        for v in r["violations"]:
            click.echo(f'  ✗ DaemonSetPolicy "{v["policy"]}" ({v["rule"]}): {v["message"]}')
        for w in r["warnings"]:
            click.echo(f"  ! {w}")
        for a in r["audit"]:
            click.echo(f'  · audit: DaemonSetPolicy "{a["policy"]}" ({a["rule"]}): {a["message"]}')
        for op in r["patch"]:
            value = f" {orjson.dumps(op['value']).decode()}" if "value" in op else ""
            click.echo(f"  ~ patch: {op['op']} {op['path']}{value}")
    denied = sum(1 for r in results if not r["allowed"])
    click.echo(
        f"{len(results)} DaemonSet(s) checked: {len(results) - denied} allowed, {denied} denied"
        + (f"; {skipped} other document(s) skipped" if skipped else "")
    )


@main.command()
@click.option(
    "--kubeconfig",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Kubeconfig; default $KUBECONFIG, ~/.kube/config, then the in-cluster service account.",
)
@click.option(
    "--policy-file",
    "policy_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Use these DaemonSetPolicies instead of watching the cluster's (repeatable).",
)
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
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
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
    log_level: str,
) -> None:
    """Run the rollout guard: pause or roll back DaemonSet rollouts whose updated pods fail."""
    from guard.main import default_identity, run_guard

    _setup_logging(log_level)
    try:
        policies = load_policies(list(policy_files)) if policy_files else None
    except InputError as e:
        raise click.ClickException(str(e)) from None
    asyncio.run(
        run_guard(
            kubeconfig=kubeconfig, policies=policies, lease_namespace=lease_namespace, lease_name=lease_name,
            identity=identity or default_identity(), host=host, port=port, tick=tick,
            leader_election=not no_leader_election, lease_duration=lease_duration,
        )
    )  # fmt: skip


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
_kubeconfig_opt = click.option("--kubeconfig", default=None, type=click.Path(exists=True, dir_okay=False))


@main.command()
@_daemonset_arg
@_kubeconfig_opt
def resume(daemonset: str, kubeconfig: str | None) -> None:
    """Resume a DaemonSet the guard paused (NAMESPACE/NAME): restore its update strategy."""
    _run_on_daemonset(daemonset, kubeconfig, "resume")


@main.command()
@_daemonset_arg
@_kubeconfig_opt
def rollback(daemonset: str, kubeconfig: str | None) -> None:
    """Roll a DaemonSet (NAMESPACE/NAME) back to its previous revision, as `kubectl rollout undo` does."""
    _run_on_daemonset(daemonset, kubeconfig, "rollback")


if __name__ == "__main__":
    main()
