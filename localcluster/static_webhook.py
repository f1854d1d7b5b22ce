"""`dsguard webhook` as a child process with fixed facts (--policy-file, --nodes): no cluster.

For the process-level tests and benchmarks that drive the real server over TLS (the fuzzer, the
abusive-clients test and benchmark). The policies and nodes are given as objects; the TLS files
come from a throwaway CA (localcluster.webhook_host.loopback_tls_files).
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import yaml

from localcluster.procs import Child, free_port, launch, process_stats, wait_ready
from localcluster.webhook_host import REPO, loopback_tls_files


class StaticWebhook:
    """A context manager: started and ready (/readyz) on enter, stopped on exit."""

    def __init__(
        self,
        workdir: Path,
        *,
        policies: Sequence[Mapping[str, Any]],
        nodes: Sequence[Mapping[str, Any]],
        kubernetes_version: str = "v1.33.4",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        self.workdir = workdir
        self.policies = list(policies)
        self.nodes = list(nodes)
        self.kubernetes_version = kubernetes_version
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.ca_pem = b""
        self.child: Child | None = None
        self.log_path = workdir / "webhook.log"

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    @property
    def pid(self) -> int:
        assert self.child is not None, "not started"
        return self.child.pid

    def rss_bytes(self) -> int:
        return process_stats(self.pid).rss_bytes

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tls, self.ca_pem = loopback_tls_files(self.workdir / "tls")
        policy_file = self.workdir / "policies.yaml"
        policy_file.write_text(yaml.safe_dump_all(self.policies, sort_keys=False))
        nodes_file = self.workdir / "nodes.yaml"
        nodes_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": self.nodes}))
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "dsguard.cli", "webhook",
            "--tls-cert-file", str(tls["tls.crt"]), "--tls-private-key-file", str(tls["tls.key"]),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--policy-file", str(policy_file), "--nodes", str(nodes_file),
            "--kubernetes-version", self.kubernetes_version, "--log-level", "warning",
            *self.extra_args,
        ]  # fmt: skip
        self.child = launch(cmd, log=self.log_path, cwd=REPO)
        wait_ready(
            self.url("/readyz"), what="dsguard webhook", child=self.child, timeout=self.startup_timeout,
            context=self.client_context(), interval=0.05,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(15)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
