"""`dsguard certs`: the webhook's TLS certificates (the certs package does the work)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from dsguard.cli import exits
from dsguard.cli.options import DURATION, kubeconfig_opt, log_format_opt, log_level_opt, setup_logging


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


@click.group()
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

    from certs.issue import FilesExist, describe, generate_files

    try:
        done = generate_files(
            out_dir, service=service, namespace=namespace, dns=dns, ips=ips,
            ca_lifetime=dt.timedelta(days=ca_days), leaf_lifetime=dt.timedelta(days=days),
            replace=force, reuse_ca=reuse_ca,
        )  # fmt: skip
    except FilesExist as e:
        keep_ca = "" if reuse_ca else ", or --reuse-ca to keep the CA and issue a new serving certificate"
        raise exits.BadInput(str(e), fix=f"pass --force to replace{keep_ca}") from None
    except ValueError as e:
        raise exits.BadInput(str(e)) from None
    except OSError as e:
        raise exits.BadInput(
            f"--out-dir {out_dir}: {e.strerror or e}", fix="give a writable directory"
        ) from None
    for _, path in sorted(done.paths.items()):
        click.echo(f"wrote {path}")
    click.echo(f"CA:      {describe(done.ca.cert)}")
    click.echo(f"serving: {describe(done.leaf.cert)}")
    click.echo(f"SANs:    {', '.join([*done.dns_names, *done.ip_addresses])}")
    click.echo(f"caBundle: {base64.b64encode(done.ca.cert_pem).decode()}")


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
@log_format_opt
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
    log_format: str,
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
    from certs.bootstrap import StoreError
    from certs.main import preview, run_certs
    from dsguard.kube import ClientConfigError

    setup_logging(log_level, log_format)
    try:
        if not dry_run:
            sys.exit(asyncio.run(run_certs(settings, kubeconfig=kubeconfig, interval=interval, once=once)))
        try:
            p = asyncio.run(preview(settings, kubeconfig=kubeconfig))
        except StoreError as e:  # as --once: an error of the round, exit 1
            click.echo(f"dsguard certs run: {e}", err=True)
            sys.exit(exits.PROBLEM)
    except ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=False) from None
    for w in p.writes:
        click.echo(f"would {w}")
    for n in p.notes:
        click.echo(f"note: {n}")
    for err in p.errors:
        click.echo(f"error: {err}")
    if not p.writes and not p.errors:
        click.echo(f"up to date; next check due {p.next_check.isoformat(timespec='seconds')}")
    sys.exit(exits.PROBLEM if p.errors else exits.OK)


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
    from certs.bootstrap import StoreError
    from certs.bundle import ca_bundle_file
    from certs.main import inject_bundle
    from certs.rotate import ConfigRef
    from dsguard.kube import ClientConfigError

    pem = ca_file.read_bytes()
    try:
        ca_bundle_file(pem)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ca-file") from None
    try:
        refs = [ConfigRef.parse(c) for c in configs]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--webhook-configuration") from None
    try:
        lines = asyncio.run(inject_bundle(refs, pem, kubeconfig=kubeconfig))
    except ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=False) from None
    except StoreError as e:
        raise exits.BadInput(str(e)) from None
    for line in lines:
        click.echo(line)
