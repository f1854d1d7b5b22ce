"""Run `dsguard webhook` on the host and register it with a cluster's apiserver by URL.

The apiserver calls https://127.0.0.1:PORT/{mutate,validate}, verifying the certificate against
the caBundle in the webhook configurations. Used by the end-to-end tests and the demo; against a
kind cluster the webhook must instead be reachable from inside it (docs/local-cluster.md).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from certs.issue import issue_serving, new_ca, write_files
from localcluster.cluster import LocalCluster
from localcluster.host_process import log_tail, stop_group, wait_ready

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "manifests" / "crds" / "dsguard.io_daemonsetpolicies.yaml"
MUTATING_NAME = "dsguard-mutate"
VALIDATING_NAME = "dsguard-validate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webhook_configurations(
    base_url: str,
    ca_pem: bytes,
    *,
    namespace_selector: Mapping[str, Any] | None = None,
    failure_policy: str = "Fail",
    timeout_seconds: int = 5,
) -> list[dict[str, Any]]:
    """The Mutating and Validating configurations for DaemonSet CREATE/UPDATE, by URL."""
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

    mutate = hook("mutate.dsguard.io", "mutate")
    # Another mutating webhook may change the template after ours; have ours run again then.
    mutate["reinvocationPolicy"] = "IfNeeded"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": MUTATING_NAME},
            "webhooks": [mutate],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": VALIDATING_NAME},
            "webhooks": [hook("validate.dsguard.io", "validate")],
        },
    ]


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
    ) -> None:
        self.cluster = cluster
        self.workdir = (workdir or cluster.workdir / "dsguard-webhook").resolve()
        self.namespace_selector = namespace_selector
        self.policy_files = tuple(policy_files)
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.log_path = cluster.logs_dir / "dsguard-webhook.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_pem = b""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Self:
        ca = new_ca("dsguard-test-ca")
        leaf = issue_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        paths = write_files(self.workdir / "certs", ca, leaf)
        self.ca_pem = ca.cert_pem
        self.cluster.kubectl("apply", "-f", str(CRD))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/daemonsetpolicies.dsguard.io"
        )
        self.port = _free_port()
        cmd = [
            sys.executable, "-m", "dsguard.cli", "webhook",
            "--tls-cert-file", str(paths["tls.crt"]),
            "--tls-private-key-file", str(paths["tls.key"]),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--kubeconfig", str(self.cluster.kubeconfig),
            *(arg for f in self.policy_files for arg in ("--policy-file", str(f))),
            *self.extra_args,
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
            )
        self._wait_ready()
        docs = webhook_configurations(self.base_url, self.ca_pem, namespace_selector=self.namespace_selector)
        self.cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        )
        return self

    def _wait_ready(self) -> None:
        wait_ready(
            f"{self.base_url}/readyz", what="dsguard webhook", proc=self.proc, log_path=self.log_path,
            timeout=self.startup_timeout, context=ssl.create_default_context(cadata=self.ca_pem.decode()),
            interval=0.2,
        )  # fmt: skip

    def metrics(self) -> str:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        with urllib.request.urlopen(f"{self.base_url}/metrics", context=ctx, timeout=5) as resp:  # noqa: S310
            return str(resp.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def unregister(self) -> None:
        self.cluster.kubectl(
            "delete", "--ignore-not-found", f"mutatingwebhookconfiguration/{MUTATING_NAME}",
            f"validatingwebhookconfiguration/{VALIDATING_NAME}", check=False,
        )  # fmt: skip

    def stop(self) -> None:
        self.unregister()
        stop_group(self.proc, 15)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
