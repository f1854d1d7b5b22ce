"""Run `dsguard webhook` on the host and register it with a cluster's apiserver by URL.

The apiserver calls https://127.0.0.1:PORT/{mutate,validate}, verifying the certificate against
the caBundle in the webhook configurations. Used by the end-to-end tests and the demo; against a
kind cluster the webhook must instead be reachable from inside it (docs/local-cluster.md).
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from certs.issue import issue_serving, new_ca, write_files
from localcluster.cluster import LocalCluster
from localcluster.procs import Child, free_port, http_get, launch, log_tail, wait_ready

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "manifests" / "crds" / "dsguard.io_daemonsetpolicies.yaml"
CRD_NAME = "daemonsetpolicies.dsguard.io"
MUTATING_NAME = "dsguard-mutate"
VALIDATING_NAME = "dsguard-validate"


def webhook_configurations(
    base_url: str,
    ca_pem: bytes,
    *,
    namespace_selector: Mapping[str, Any] | None = None,
    failure_policy: str = "Fail",
    timeout_seconds: int = 5,
    name: str = "dsguard",
) -> list[dict[str, Any]]:
    """The Mutating and Validating configurations for DaemonSet CREATE/UPDATE, by URL.
    name: configurations {name}-mutate and {name}-validate, webhooks mutate.{name}.io and
    validate.{name}.io (several webhooks registered side by side, e.g. by a benchmark)."""
    bundle = base64.b64encode(ca_pem).decode()
    rules = [
        {
            "apiGroups": ["apps"],
            "apiVersions": ["v1"],
            "resources": ["daemonsets"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]

    def hook(name: str, path: str) -> dict[str, Any]:
        h: dict[str, Any] = {
            "name": name,
            "clientConfig": {"url": f"{base_url}/{path}", "caBundle": bundle},
            "rules": rules,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
        }
        if namespace_selector is not None:
            h["namespaceSelector"] = dict(namespace_selector)
        return h

    mutate = hook(f"mutate.{name}.io", "mutate")
    # Another mutating webhook may change the template after ours; have ours run again then.
    mutate["reinvocationPolicy"] = "IfNeeded"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": f"{name}-mutate"},
            "webhooks": [mutate],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"{name}-validate"},
            "webhooks": [hook(f"validate.{name}.io", "validate")],
        },
    ]


def loopback_tls_files(directory: Path) -> tuple[dict[str, Path], bytes]:
    """A throwaway CA and a serving certificate for 127.0.0.1 and localhost, written to directory
    (ca.crt, tls.crt, tls.key, by certs.issue.write_files); the paths and the CA's PEM."""
    ca = new_ca("dsguard-test-ca")
    leaf = issue_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    return write_files(directory, ca, leaf), ca.cert_pem


def apply_crd(cluster: LocalCluster) -> str:
    """The DaemonSetPolicy CRD, applied (idempotently) and Established; its name."""
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    return CRD_NAME


class HostWebhook:
    """`dsguard webhook` as a child process, registered with the cluster; a context manager."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        workdir: Path | None = None,
        namespace_selector: Mapping[str, Any] | None = None,
        policy_files: Sequence[Path] = (),
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        name: str = "dsguard",
    ) -> None:
        self.cluster = cluster
        self.workdir = (workdir or cluster.workdir / f"{name}-webhook").resolve()
        self.namespace_selector = namespace_selector
        self.policy_files = tuple(policy_files)
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.name = name  # of the webhook configurations (webhook_configurations)
        self.port = 0
        self.log_path = cluster.logs_dir / f"{name}-webhook.log"
        self.child: Child | None = None
        self.ca_pem = b""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Self:
        paths, self.ca_pem = loopback_tls_files(self.workdir / "certs")
        apply_crd(self.cluster)
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "dsguard.cli", "webhook",
            "--tls-cert-file", str(paths["tls.crt"]),
            "--tls-private-key-file", str(paths["tls.key"]),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--kubeconfig", str(self.cluster.kubeconfig),
            *(arg for f in self.policy_files for arg in ("--policy-file", str(f))),
            *self.extra_args,
        ]  # fmt: skip
        self.child = launch(cmd, log=self.log_path, cwd=REPO)
        self._wait_ready()
        docs = webhook_configurations(
            self.base_url, self.ca_pem, namespace_selector=self.namespace_selector, name=self.name
        )
        self.cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        )
        return self

    def client_context(self) -> ssl.SSLContext:
        """Trusts the webhook's serving certificate (its throwaway CA)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def _wait_ready(self) -> None:
        wait_ready(
            f"{self.base_url}/readyz", what="dsguard webhook", child=self.child, timeout=self.startup_timeout,
            context=self.client_context(), interval=0.2,
        )  # fmt: skip

    def metrics(self) -> str:
        status, body = http_get(f"{self.base_url}/metrics", context=self.client_context(), timeout=5)
        if status != 200:
            raise RuntimeError(f"dsguard webhook /metrics: HTTP {status}: {body.decode(errors='replace')}")
        return body.decode()

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def unregister(self) -> None:
        self.cluster.kubectl(
            "delete", "--ignore-not-found", f"mutatingwebhookconfiguration/{self.name}-mutate",
            f"validatingwebhookconfiguration/{self.name}-validate", check=False,
        )  # fmt: skip

    def stop(self) -> None:
        self.unregister()
        if self.child is not None:
            self.child.stop(15)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
