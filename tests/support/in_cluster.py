"""What the tests of dsguard installed in the cluster (on the real node) share: a real-node
cluster that waits its turn (one real node per machine), the pods of the `dsguard` namespace,
kwok nodes for a test's DaemonSets, and the deny-then-mutate check through the Service."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import LocalCluster, start_when_node_free
from localcluster.image import BuiltImage, ImageError, build_image
from localcluster.nodes import create_nodes, node_manifest, wait_nodes_ready
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import in_group
from tests.support.polling import poll
from tests.support.real_node import require_real_node

__all__ = [
    "INFRA",
    "NS",
    "KwokEnv",
    "admin_context",
    "check_denied_then_mutated",
    "dry_run_create",
    "image_or_fail",
    "pods",
    "ready",
    "start_real_node_cluster",
]

NS = "dsguard"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}


def image_or_fail() -> BuiltImage:
    require_real_node()
    try:
        return build_image()  # a cache hit unless the sources changed since the last `make image`
    except ImageError as exc:
        pytest.fail(f"dsguard's image could not be built: {exc}", pytrace=False)


def start_real_node_cluster(
    workdir: Path, *, image: BuiltImage | None = None, wait_turn: float = 900
) -> LocalCluster:
    """A started LocalCluster with a real node. Only one real node runs per machine: while
    another one (e.g. a CI run's) holds it, retry until it is gone, up to wait_turn seconds.
    With `image`: the starting node must have imported it itself (issue 12, item 2)."""

    def make(attempt: int) -> LocalCluster:
        return LocalCluster(workdir / f"try{attempt}", real_node=True, startup_timeout=240)

    c = start_when_node_free(make, wait=wait_turn)
    if image is not None and (c.real_node is None or image.cri_ref not in c.real_node.image_refs()):
        c.stop()
        pytest.fail("the real node did not import the built image", pytrace=False)
    return c


def pods(c: LocalCluster, ns: str = NS) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = c.kubectl_json("get", "pods", "-n", ns)["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(cond["type"] == "Ready" and cond["status"] == "True" for cond in conds)


class KwokEnv:
    """A namespace and two kwok nodes (one tainted INFRA) for a test's DaemonSets."""

    def __init__(self, c: LocalCluster, ns: str) -> None:
        self.c = c
        self.ns = ns
        c.kubectl("create", "namespace", ns)
        nodes = [node_manifest(f"{ns}-plain", labels=in_group(ns)),
                 node_manifest(f"{ns}-infra", labels=in_group(ns), taints=[INFRA])]  # fmt: skip
        self.nodes = [n["metadata"]["name"] for n in nodes]
        create_nodes(c.kubectl, nodes)
        wait_nodes_ready(c.kubectl, self.nodes)

    def daemonset(self, name: str = "agent", ns: str | None = None) -> dict[str, Any]:
        return builders.daemonset(
            name, ns or self.ns, image="registry.example.com/agent:2.1.0", node_selector=in_group(self.ns)
        )

    def remove(self) -> None:
        self.c.kubectl("delete", "namespace", self.ns, "--wait=false")
        self.c.kubectl("delete", "node", *self.nodes)


def check_denied_then_mutated(c: LocalCluster, env: KwokEnv, policy: str) -> None:
    """The in-cluster webhook, called through its Service, denies a DaemonSet missing INFRA's
    toleration, then (onMissing: Add) adds it: the messages of the host-run tests."""
    apply(c, builders.policy(policy, {"tolerations": {"required": [INFRA]}}, namespaces=[env.ns]))

    def denied() -> subprocess.CompletedProcess[str] | None:  # once the webhook has seen the policy
        p = apply(c, env.daemonset(), "--dry-run=server", check=False)
        return p if p.returncode != 0 else None

    proc = poll(denied, what="the in-cluster webhook to deny (it watches the policy)", timeout=60)
    assert 'admission webhook "validate.dsguard.io" denied the request' in proc.stderr
    assert "spec.template.spec.tolerations: missing required toleration" in proc.stderr
    assert "tolerations.onMissing: Add" in proc.stderr

    apply(c, builders.policy(policy, {"tolerations": {"required": [INFRA], "onMissing": "Add"}},
                             namespaces=[env.ns]))  # fmt: skip

    def mutated() -> subprocess.CompletedProcess[str] | None:
        p = apply(c, env.daemonset(), check=False)
        return p if p.returncode == 0 else None

    proc = poll(mutated, what="the in-cluster webhook to add the toleration", timeout=60)
    assert "dsguard added toleration" in proc.stderr
    stored = c.kubectl_json("get", "daemonset", "agent", "-n", env.ns)
    assert INFRA in stored["spec"]["template"]["spec"]["tolerations"]


def admin_context(c: LocalCluster) -> ssl.SSLContext:
    """TLS to the apiserver as the cluster admin (client certificate)."""
    assert c.pki is not None
    ctx = ssl.create_default_context(cafile=str(c.pki.ca.cert))
    admin = c.pki.clients["admin"]
    ctx.load_cert_chain(str(admin.cert), str(admin.key))
    return ctx


def dry_run_create(c: LocalCluster, ctx: ssl.SSLContext, path: str, body: bytes) -> tuple[int, float, bool]:
    """POST as the admin: the status, the seconds it took, and whether the object the apiserver
    answers with carries INFRA's toleration (added by the mutating webhook)."""
    conn = http.client.HTTPSConnection("127.0.0.1", c.ports.apiserver, context=ctx, timeout=30)
    try:
        t = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        seconds = time.perf_counter() - t
    finally:
        conn.close()
    obj = json.loads(data)
    tolerations = obj.get("spec", {}).get("template", {}).get("spec", {}).get("tolerations", [])
    return resp.status, seconds, INFRA in tolerations
