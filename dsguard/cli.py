"""The `dsguard` command."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from dsguard.cli_options import (
    DURATION,
    kubeconfig_opt,
    log_level_opt,
    policy_files_opt,
    setup_logging,
)
from dsguard.documents import InputError, load_documents, load_nodes, load_policies
from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo
from dsguard.status_cmd import status
from dsguard.upgrade_cmd import upgrade_check

EXIT_DENIED = 1
MIN_AUDIT_RESYNC = 10.0
EXIT_BAD_INPUT = 2


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
@log_level_opt
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
    log_level: str,
) -> None:
    """Run the admission webhook (HTTPS: /mutate, /validate, /healthz, /readyz, /metrics)."""
    setup_logging(log_level)
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
            tls_cert_file,
            tls_private_key_file,
            host,
            port,
            policies,
            kubeconfig,
            nodes,
            kubernetes_version,
            frozenset(exempt_users),
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
    exempt_users: frozenset[str],
) -> None:
    from dsguard.cluster_cache import ClusterCache
    from dsguard.kube import api_client
    from webhook.server import WebhookState, run
    from webhook.tls import CertReloader, server_context

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
            WebhookState(cache=cache, exempt_users=exempt_users),
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
    from dsguard.rules.engine import evaluate

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
        ev = evaluate(policies, body, facts=facts)
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
    help="Audit at least this often even when nothing changed.",
)
@log_level_opt
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
    log_level: str,
) -> None:
    """Run the rollout guard: pause or roll back DaemonSet rollouts whose updated pods fail."""
    if audit_resync < MIN_AUDIT_RESYNC:
        raise click.BadParameter(
            f"must be at least {MIN_AUDIT_RESYNC:g}s (got {audit_resync:g}s): every resync may write "
            "each DaemonSetPolicy's status; changes are audited at once anyway",
            param_hint="--audit-resync",
        )
    from guard.main import default_identity, run_guard

    setup_logging(log_level)
    try:
        policies = load_policies(list(policy_files)) if policy_files else None
    except InputError as e:
        raise click.ClickException(str(e)) from None
    asyncio.run(
        run_guard(
            kubeconfig=kubeconfig, policies=policies, lease_namespace=lease_namespace, lease_name=lease_name,
            identity=identity or default_identity(), host=host, port=port, tick=tick,
            leader_election=not no_leader_election, lease_duration=lease_duration,
            audit=audit, audit_resync=audit_resync,
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


@main.command()
@_daemonset_arg
@kubeconfig_opt
def resume(daemonset: str, kubeconfig: str | None) -> None:
    """Resume a DaemonSet the guard paused (NAMESPACE/NAME): restore its update strategy."""
    _run_on_daemonset(daemonset, kubeconfig, "resume")


@main.command()
@_daemonset_arg
@kubeconfig_opt
def rollback(daemonset: str, kubeconfig: str | None) -> None:
    """Roll a DaemonSet (NAMESPACE/NAME) back to its previous revision, as `kubectl rollout undo` does."""
    _run_on_daemonset(daemonset, kubeconfig, "rollback")


# --- dsguard certs ---------------------------------------------------------------------------------


def _san_options(f: Any) -> Any:
    f = click.option("--ip", "ips", multiple=True, help="An extra IP address SAN (repeatable).")(f)
    f = click.option("--dns", "dns", multiple=True, help="An extra DNS name SAN (repeatable).")(f)
    f = click.option("--namespace", required=True, help="The webhook Service's namespace.")(f)
    f = click.option("--service", required=True, help="The webhook Service's name.")(f)
    return f


def _lifetime_options(f: Any) -> Any:
    f = click.option(
        "--days", default=90, show_default=True, type=click.IntRange(1), help="Serving certificate lifetime."
    )(f)
    f = click.option(
        "--ca-days", default=5 * 365, show_default=True, type=click.IntRange(1), help="CA lifetime."
    )(f)
    return f


@main.group()
def certs() -> None:
    """The webhook's TLS certificates: generate files, or keep the in-cluster ones current.

    docs/certificates.md describes the design and the CA rotation.
    """


@certs.command("generate")
@_san_options
@_lifetime_options
@click.option(
    "--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where to write."
)
@click.option("--force", is_flag=True, help="Replace existing files, keys included.")
@click.option(
    "--reuse-ca",
    is_flag=True,
    help="Issue a serving certificate from OUT_DIR/ca.crt and ca.key instead of a new CA.",
)
def certs_generate(
    service: str,
    namespace: str,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    ca_days: int,
    days: int,
    out_dir: Path,
    force: bool,
    reuse_ca: bool,
) -> None:
    """Write ca.crt, ca.key, tls.crt and tls.key (keys mode 0600) for SERVICE.NAMESPACE.

    The serving certificate names SERVICE, SERVICE.NAMESPACE, SERVICE.NAMESPACE.svc and
    SERVICE.NAMESPACE.svc.cluster.local, plus any --dns and --ip. Prints the caBundle to paste into
    the webhook configurations (or use `dsguard certs inject`).
    """
    import base64
    import datetime as dt

    from certs.issue import describe, issue_serving, load_key_pair, new_ca, service_dns_names, write_files

    names = service_dns_names(service, namespace) + [
        d for d in dns if d not in service_dns_names(service, namespace)
    ]
    targets = ["tls.crt", "tls.key"] if reuse_ca else ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    existing = [out_dir / n for n in targets if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    if existing and not force:
        raise click.ClickException(
            f"{', '.join(map(str, existing))} already exist(s); pass --force to replace"
            + ("" if reuse_ca else ", or --reuse-ca to keep the CA and issue a new serving certificate")
        )
    try:
        if reuse_ca:
            try:
                ca = load_key_pair((out_dir / "ca.crt").read_bytes(), (out_dir / "ca.key").read_bytes())
            except OSError as e:
                raise click.ClickException(f"--reuse-ca: {e}") from None
        else:
            ca = new_ca(f"{service}.{namespace}-ca", dt.timedelta(days=ca_days))
        leaf = issue_serving(ca, dns_names=names, ip_addresses=list(ips), lifetime=dt.timedelta(days=days))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    paths = write_files(out_dir, ca, leaf, include_ca_key=not reuse_ca)
    for _, path in sorted(paths.items()):
        click.echo(f"wrote {path}")
    click.echo(f"CA:      {describe(ca.cert)}")
    click.echo(f"serving: {describe(leaf.cert)}")
    click.echo(f"SANs:    {', '.join([*names, *ips])}")
    click.echo(f"caBundle: {base64.b64encode(ca.cert_pem).decode()}")


def _certs_settings(
    *,
    namespace: str,
    service: str,
    secret: str,
    ca_secret: str,
    configs: tuple[str, ...],
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    ca_days: int,
    days: int,
    propagation_delay: float,
    grace: float,
) -> Any:
    import datetime as dt

    from certs.rotate import ConfigRef, Settings

    try:
        refs = tuple(ConfigRef.parse(c) for c in configs)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--webhook-configuration") from None
    settings = Settings(
        namespace=namespace,
        service=service,
        secret=secret,
        ca_secret=ca_secret,
        webhook_configurations=refs,
        extra_dns=dns,
        extra_ips=ips,
        ca_lifetime=dt.timedelta(days=ca_days),
        leaf_lifetime=dt.timedelta(days=days),
        propagation_delay=dt.timedelta(seconds=propagation_delay),
        grace=dt.timedelta(seconds=grace),
    )
    problems = settings.problems()
    if problems:
        raise click.UsageError("; ".join(problems))
    return settings


@certs.command("run")
@_san_options
@_lifetime_options
@click.option(
    "--secret",
    default="dsguard-webhook-tls",
    show_default=True,
    help="The serving Secret (kubernetes.io/tls).",
)
@click.option("--ca-secret", default="dsguard-webhook-ca", show_default=True, help="The CA Secret (Opaque).")
@click.option(
    "--webhook-configuration",
    "configs",
    multiple=True,
    required=True,
    help="Inject the caBundle into this configuration: NAME, mutating/NAME or validating/NAME (repeatable).",
)
@click.option("--interval", default="1h", show_default=True, type=DURATION, help="Look at least this often.")
@click.option(
    "--propagation-delay",
    default="30s",
    show_default=True,
    type=DURATION,
    help="Wait after writing a caBundle before serving a certificate only it verifies.",
)
@click.option(
    "--grace",
    default="5m",
    show_default=True,
    type=DURATION,
    help="Keep the old CA this long after the new serving certificate is in the Secret (> kubelet sync).",
)
@click.option("--once", is_flag=True, help="Bring everything up to date, then exit (0 done, 1 errors).")
@click.option("--dry-run", is_flag=True, help="Print what one round would write, write nothing.")
@kubeconfig_opt
@log_level_opt
def certs_run(
    service: str,
    namespace: str,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    ca_days: int,
    days: int,
    secret: str,
    ca_secret: str,
    configs: tuple[str, ...],
    interval: float,
    propagation_delay: float,
    grace: float,
    once: bool,
    dry_run: bool,
    kubeconfig: str | None,
    log_level: str,
) -> None:
    """Keep the webhook's CA, serving Secret and caBundles current, in the cluster.

    Creates the CA and the serving certificate, injects the CA bundle into every webhook of the
    named configurations, renews the serving certificate when a third of its lifetime is left and
    rotates the CA with an overlap (old and new CA both in the caBundle while it switches).
    """
    settings = _certs_settings(
        namespace=namespace, service=service, secret=secret, ca_secret=ca_secret, configs=configs,
        dns=dns, ips=ips, ca_days=ca_days, days=days, propagation_delay=propagation_delay, grace=grace,
    )  # fmt: skip
    setup_logging(log_level)
    sys.exit(asyncio.run(_certs_run(settings, kubeconfig, interval=interval, once=once, dry_run=dry_run)))


async def _certs_run(
    settings: Any, kubeconfig: str | None, *, interval: float, once: bool, dry_run: bool
) -> int:
    import datetime as dt

    from certs.bootstrap import KubeStore, StoreError, observe, run
    from certs.rotate import plan
    from dsguard.kube import api_client

    api = await api_client(kubeconfig)
    try:
        store = KubeStore(api)
        if not dry_run:
            return await run(store, settings, interval=interval, once=once)
        try:
            p = plan(await observe(store, settings), settings, dt.datetime.now(dt.UTC))
        except StoreError as e:
            click.echo(f"dsguard certs run: {e}", err=True)
            return 1
        for w in p.writes:
            click.echo(f"would {w}")
        for n in p.notes:
            click.echo(f"note: {n}")
        for err in p.errors:
            click.echo(f"error: {err}")
        if not p.writes and not p.errors:
            click.echo(f"up to date; next check due {p.next_check.isoformat(timespec='seconds')}")
        return 1 if p.errors else 0
    finally:
        await api.close()


@certs.command("inject")
@click.option(
    "--ca-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA bundle.",
)
@click.option(
    "--webhook-configuration",
    "configs",
    multiple=True,
    required=True,
    help="NAME, mutating/NAME or validating/NAME (repeatable).",
)
@kubeconfig_opt
def certs_inject(ca_file: Path, configs: tuple[str, ...], kubeconfig: str | None) -> None:
    """Set CA_FILE as the caBundle of every webhook of the named configurations, once."""
    from certs.bundle import parse_bundle
    from certs.issue import is_ca
    from certs.rotate import ConfigRef

    pem = ca_file.read_bytes()
    if b"PRIVATE KEY" in pem:
        raise click.BadParameter(
            "the file holds a private key; give the CA certificate(s) only", param_hint="--ca-file"
        )
    bundle = parse_bundle(pem)
    if not bundle or not all(is_ca(c) for c in bundle):
        raise click.BadParameter("expected PEM CA certificates", param_hint="--ca-file")
    try:
        refs = [ConfigRef.parse(c) for c in configs]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--webhook-configuration") from None
    for line in asyncio.run(_certs_inject(refs, pem, kubeconfig)):
        click.echo(line)


async def _certs_inject(refs: list[Any], pem: bytes, kubeconfig: str | None) -> list[str]:
    import datetime as dt

    from certs.bootstrap import KubeStore, StoreError, inject
    from dsguard.kube import api_client

    api = await api_client(kubeconfig)
    try:
        return await inject(KubeStore(api), refs, pem, now=dt.datetime.now(dt.UTC))
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    finally:
        await api.close()


# Commands in modules of their own.
main.add_command(status)
main.add_command(upgrade_check)


if __name__ == "__main__":
    main()
