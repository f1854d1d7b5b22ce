"""Command-line options several `dsguard` commands share, declared once so their meaning and
help can't drift apart; the kubectl-style ones (--kubeconfig, --context, -n, -A, -o) behave as
kubectl's do."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from pythonjsonlogger.orjson import OrjsonFormatter

from dsguard.documents import PolicySet
from dsguard.log_context import ObjectFilter

F = TypeVar("F", bound=Callable[..., Any])

kubeconfig_opt = click.option(
    "--kubeconfig",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Kubeconfig; default $KUBECONFIG, ~/.kube/config, then the in-cluster service account.",
)
context_opt = click.option("--context", default=None, help="The kubeconfig context to use.")
namespace_opt = click.option(
    "-n", "--namespace", default=None, help='Namespace; default the context\'s namespace, else "default".'
)
all_namespaces_opt = click.option(
    "-A", "--all-namespaces", is_flag=True, help="Every namespace (overrides --namespace)."
)
policy_files_opt = click.option(
    "--policy-file",
    "policy_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Use these DaemonSetPolicies instead of the cluster's (repeatable).",
)
log_level_opt = click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
log_format_opt = click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    envvar="DSGUARD_LOG_FORMAT",
    help="json: one JSON object per line (time, level, logger, message, object: the Kubernetes "
    "object the line is about, exception); also $DSGUARD_LOG_FORMAT.",
)


def output_opt(*choices: str, default: str) -> Callable[[F], F]:
    return click.option(
        "-o", "--output", type=click.Choice(list(choices)), default=default, show_default=True
    )


def note_skipped(flag: str, policy_set: PolicySet) -> None:
    """One line on stderr when --policy files held other kinds (stdout stays the report)."""
    if policy_set.skipped:
        click.echo(
            f"{flag}: {len(policy_set.policies)} DaemonSetPolicy(ies); {policy_set.skipped_note()}", err=True
        )


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The LogRecord attributes a JSON line carries, renamed to what log pipelines expect.
JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger", "message": "message"}


class _UTCJsonFormatter(OrjsonFormatter):
    """RFC 3339 UTC times with milliseconds, as Kubernetes' own JSON logs (klog) have them."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = datetime.fromtimestamp(record.created, tz=UTC)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours: setup_logging replaces it, and leaves alone a root another program configured."""


def log_handler(log_format: str, stream: IO[str]) -> logging.Handler:
    """The one handler of a long-running command: text (the default) or one JSON object a line."""
    handler = _Handler(stream)
    if log_format == "json":
        handler.setFormatter(
            _UTCJsonFormatter(
                [*JSON_FIELDS, "object"],
                rename_fields={**JSON_FIELDS, "exc_info": "exception"},
                exc_info_as_array=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ObjectFilter())
    return handler


def setup_logging(level: str, log_format: str = "text") -> None:
    """As logging.basicConfig: a no-op when the root logger already has another's handlers (a
    program embedding the command, pytest); ours from an earlier call are replaced."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if root.handlers and not ours:
        return
    for h in ours:
        root.removeHandler(h)
    root.addHandler(log_handler(log_format, sys.stderr))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def resolve_namespace(
    kubeconfig: str | None, context: str | None, namespace: str | None, all_namespaces: bool
) -> str | None:
    """The namespace a kubectl-style command works in: None for every namespace (-A); else -n;
    else the kubeconfig context's namespace; else "default" (kubectl's order)."""
    if all_namespaces:
        return None
    if namespace:
        return namespace
    return context_namespace(kubeconfig, context) or "default"


def context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    from kubernetes_asyncio import config

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path and not os.path.exists(os.path.expanduser("~/.kube/config")):
        # In a pod, kubectl's default is the service account's namespace.
        sa = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        return Path(sa).read_text().strip() if os.path.exists(sa) else None
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except Exception:  # a broken kubeconfig is reported when the client is built, with its reason
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    if not chosen:
        return None
    ns = (chosen.get("context") or {}).get("namespace")
    return str(ns) if ns else None


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "500ms", "5m", "1h30m", "2d" (units ms, s, m, h, d, summed)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhd])", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"{text!r} is not a duration like 90s, 500ms, 5m, 1h30m or 2d")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


class _Duration(click.ParamType[float]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = _Duration()
