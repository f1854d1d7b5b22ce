"""The world of the wave-rollout cluster tests (tests/cluster/test_waves_cluster.py): zoned kwok
nodes, a waves policy, the wave annotations as the guard writes them, an exporter a Prometheus
scrapes, and apiserver traffic that grows with the updated pods (a chatty agent)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from localcluster.cluster import LocalCluster
from localcluster.nodes import create_nodes, node_manifest
from localcluster.procs import free_port
from tests.support.builders import policy
from tests.support.guard_scenario import REVISION_LABEL, Scenario
from tests.support.kwok import in_group

ZONE = "topology.kubernetes.io/zone"
WAVE = "dsguard.io/wave"
WAVES_REVISION = "dsguard.io/waves-revision"
BAKE_STARTED_AT = "dsguard.io/bake-started-at"
WAVES_COMPLETED = "dsguard.io/waves-completed"
ORIGINAL_STRATEGY = "dsguard.io/original-update-strategy"

Obj = dict[str, Any]


def add_zoned_nodes(s: Scenario, zones: Mapping[str, int]) -> dict[str, list[str]]:
    """kwok nodes `<ns>-<zone>-<i>` in each zone, in the test's group; by zone."""
    out: dict[str, list[str]] = {}
    manifests = []
    for zone, count in zones.items():
        have = sum(1 for n in s.nodes if n.startswith(f"{s.ns}-{zone}-"))
        names = [f"{s.ns}-{zone}-{i}" for i in range(have, have + count)]
        out[zone] = names
        manifests += [node_manifest(n, labels={**in_group(s.ns), ZONE: zone}) for n in names]
        s.nodes += names
    create_nodes(s.cluster.kubectl, manifests)
    return out


def waves_policy(
    s: Scenario,
    waves: Mapping[str, Any],
    *,
    threshold: int = 1,
    action: str = "Pause",
    gates: Mapping[str, Any] | None = None,
    alert_url: str | None = None,
    name: str = "waves",
) -> Path:
    guard: dict[str, Any] = {"failureThreshold": threshold, "action": action, "waves": dict(waves)}
    if gates:
        guard["gates"] = dict(gates)
    if alert_url is not None:
        guard["alerts"] = [{"type": "Webhook", "url": alert_url, "hmacSecretRef": s.hmac_secret()}]
    doc = policy(f"{name}-{s.ns}", {"guard": guard}, namespaces=[s.ns])
    path = s.tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def nodes_on(s: Scenario, revision: str) -> set[str]:
    """Nodes with a pod (not being deleted) on `revision`."""
    return {
        p["spec"]["nodeName"]
        for p in s.pods()
        if p["metadata"]["labels"].get(REVISION_LABEL) == revision and p["spec"].get("nodeName")
    }


def all_pods(s: Scenario) -> list[Obj]:
    """Every pod of the DaemonSet, those being deleted too."""
    return list(s.cluster.kubectl_json("get", "pods", "-n", s.ns, "-l", "app=agent")["items"])


def dsguard(s: Scenario, *args: str) -> tuple[int, str, str]:
    """`dsguard ARGS` against the test cluster: (exit code, stdout, stderr)."""
    import os
    import sys

    env = {**os.environ, "KUBECONFIG": str(s.cluster.kubeconfig)}
    out = subprocess.run(
        [sys.executable, "-m", "dsguard.cli", *args], capture_output=True, text=True, env=env, check=False,
        timeout=60,
    )  # fmt: skip
    return out.returncode, out.stdout, out.stderr


class Exporter:
    """A /metrics endpoint serving `agent_errors <value>`; the test sets the value."""

    def __init__(self) -> None:
        self.value = 0.0
        self.port = free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE agent_errors gauge\nagent_errors {outer.value}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="exporter", daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ChattyAgent:
    """Apiserver traffic at `per_pod` requests/s for every pod `count()` says runs the new
    revision, plus `steady` requests/s throughout: what a chatty agent does to the control plane.
    Bounded: it stops by itself after `limit` seconds."""

    def __init__(
        self,
        cluster: LocalCluster,
        path: str,
        *,
        count: Callable[[], int],
        per_pod: float = 0.0,
        steady: float = 0.0,
        limit: float = 300.0,
    ) -> None:
        self.cluster = cluster
        self.path = path
        self.count = count
        self.per_pod = per_pod
        self.steady = steady
        self.limit = limit
        self.sent = 0
        self._stop = threading.Event()
        self._pods = 0
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]

    def start(self) -> ChattyAgent:
        for t in self._threads:
            t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(subprocess.SubprocessError, OSError, ValueError, KeyError):
                self._pods = self.count()  # a failed read keeps the last count

    def _send(self) -> None:
        began = time.monotonic()
        next_at = began
        while not self._stop.is_set() and time.monotonic() - began < self.limit:
            rate = self.steady + self.per_pod * self._pods
            if rate <= 0:
                self._stop.wait(0.1)
                next_at = time.monotonic()
                continue
            next_at += 1.0 / rate
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            try:
                self.cluster.api_get(self.path, timeout=2.0)
                self.sent += 1
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
