"""dsguard installed in the cluster the way users install it (issue 12, item 3's first test): its
image, built from the Dockerfile (localcluster/image.py, cached), imported by the real node
itself; `helm install dsguard manifests/helm/dsguard -n dsguard --create-namespace --wait` with
only the image and the node pinning set; every pod Ready; the apiserver calls the webhook through
its Service (dsguard-webhook.dsguard.svc): a DaemonSet is mutated and denied with the same
messages as the host-run tests (test_webhook_e2e.py). Prints the install time and the webhook
round trip through the Service (p50/p99 of server-side dry-run creates, beside the same creates
in the namespace the webhooks skip, measured in the same run).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import LocalCluster
from localcluster.image import BuiltImage, ImageError, build_image
from localcluster.nodes import create_nodes, node_manifest, wait_nodes_ready
from localcluster.realnode import NODE_NAME
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import in_group
from tests.support.polling import poll
from tests.support.real_node import require_real_node

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "manifests" / "helm" / "dsguard"
BUILD_HELM = REPO / "localcluster" / "gobuild" / "build_helm.sh"
NS = "dsguard"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
COMPONENTS = ("webhook", "guard", "certs")

Helm = Callable[..., subprocess.CompletedProcess[str]]


def _helm(home: Path, kubeconfig: Path) -> Helm:
    proc = subprocess.run(
        ["bash", str(BUILD_HELM)], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{BUILD_HELM} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1]) / "helm"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
    env |= {f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}
    env["KUBECONFIG"] = str(kubeconfig)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    return run


class Installed:
    def __init__(self, cluster: LocalCluster, image: BuiltImage, install_seconds: float) -> None:
        self.cluster = cluster
        self.image = image
        self.install_seconds = install_seconds


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    require_real_node()
    try:
        image = build_image()  # a cache hit unless the sources changed since the last `make image`
    except ImageError as exc:
        pytest.fail(f"dsguard's image could not be built: {exc}", pytrace=False)
    # The starting real node imports the latest built dsguard image itself (issue 12, item 2).
    c = LocalCluster(tmp_path_factory.mktemp("in-cluster"), real_node=True, startup_timeout=240)
    c.start()
    try:
        assert c.real_node is not None
        assert image.cri_ref in c.real_node.image_refs(), "the real node did not import the built image"
        helm = _helm(tmp_path_factory.mktemp("helm-home"), c.kubeconfig)
        repo, tag = image.ref.rsplit(":", 1)
        pin = json.dumps({"kubernetes.io/hostname": NODE_NAME})
        t0 = time.monotonic()
        helm(
            "install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
            "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
            *[a for comp in COMPONENTS for a in ("--set-json", f"{comp}.nodeSelector={pin}")],
            timeout=330,
        )  # fmt: skip
        yield Installed(c, image, time.monotonic() - t0)
    finally:
        c.stop()


def _pods(c: LocalCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = c.kubectl_json("get", "pods", "-n", NS)["items"]
    return items


def test_helm_install_every_pod_ready_on_the_real_node(installed: Installed) -> None:
    c = installed.cluster
    pods = _pods(c)
    assert len(pods) == 5, [p["metadata"]["name"] for p in pods]  # 2 webhooks, 2 guards, 1 certs
    for p in pods:
        assert p["spec"]["nodeName"] == NODE_NAME
        ready = [cond for cond in p["status"]["conditions"] if cond["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", p["metadata"]["name"]
        assert p["status"]["podIP"].startswith("10.244.0."), p["status"]["podIP"]
        assert p["spec"]["containers"][0]["image"] == installed.image.ref
    # The certs Deployment wrote the serving Secret and put the CA into both configurations.
    for kind, name in (("mutatingwebhookconfiguration", "dsguard-mutate"),
                       ("validatingwebhookconfiguration", "dsguard-validate")):  # fmt: skip
        conf = c.kubectl_json("get", kind, name)
        assert conf["webhooks"][0]["clientConfig"].get("caBundle"), f"{name}: no caBundle"
    print(f"helm install --wait: {installed.install_seconds:.1f}s")


class _Env:
    def __init__(self, c: LocalCluster, ns: str) -> None:
        self.c = c
        self.ns = ns
        c.kubectl("create", "namespace", ns)
        nodes = [node_manifest(f"{ns}-plain", labels=in_group(ns)),
                 node_manifest(f"{ns}-infra", labels=in_group(ns), taints=[INFRA])]  # fmt: skip
        create_nodes(c.kubectl, nodes)
        wait_nodes_ready(c.kubectl, [n["metadata"]["name"] for n in nodes])

    def daemonset(self, name: str = "agent") -> dict[str, Any]:
        return builders.daemonset(
            name, self.ns, image="registry.example.com/agent:2.1.0", node_selector=in_group(self.ns)
        )


def test_daemonsets_are_mutated_and_denied_through_the_service(installed: Installed) -> None:
    c = installed.cluster
    env = _Env(c, "e2e-in-cluster")
    apply(c, builders.policy("in-cluster-deny", {"tolerations": {"required": [INFRA]}}, namespaces=[env.ns]))

    def denied() -> subprocess.CompletedProcess[str] | None:  # once the webhook has seen the policy
        p = apply(c, env.daemonset(), "--dry-run=server", check=False)
        return p if p.returncode != 0 else None

    proc = poll(denied, what="the in-cluster webhook to deny (it watches the policy)", timeout=60)
    assert 'admission webhook "validate.dsguard.io" denied the request' in proc.stderr
    assert "spec.template.spec.tolerations: missing required toleration" in proc.stderr
    assert "tolerations.onMissing: Add" in proc.stderr

    apply(c, builders.policy("in-cluster-deny", {"tolerations": {"required": [INFRA], "onMissing": "Add"}},
                             namespaces=[env.ns]))  # fmt: skip

    def mutated() -> subprocess.CompletedProcess[str] | None:
        p = apply(c, env.daemonset(), check=False)
        return p if p.returncode == 0 else None

    proc = poll(mutated, what="the in-cluster webhook to add the toleration", timeout=60)
    assert "dsguard added toleration" in proc.stderr
    stored = c.kubectl_json("get", "daemonset", "agent", "-n", env.ns)
    assert INFRA in stored["spec"]["template"]["spec"]["tolerations"]


def _post(c: LocalCluster, ctx: ssl.SSLContext, path: str, body: bytes) -> tuple[int, float, bool]:
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


def test_webhook_round_trip_through_the_service(installed: Installed) -> None:
    """p50/p99 of 200 server-side dry-run creates of an allowed DaemonSet, judged by both webhooks
    through the Service, beside 200 in the webhooks' excluded namespace (dsguard's own)."""
    c = installed.cluster
    assert c.pki is not None
    ctx = ssl.create_default_context(cafile=str(c.pki.ca.cert))
    admin = c.pki.clients["admin"]
    ctx.load_cert_chain(str(admin.cert), str(admin.key))
    n = 200
    ns = "rt-judged"
    c.kubectl("create", "namespace", ns)
    apply(
        c, builders.policy("rt", {"tolerations": {"required": [INFRA], "onMissing": "Add"}}, namespaces=[ns])
    )

    def request(where: str) -> tuple[int, float, bool]:
        body = json.dumps(builders.daemonset("rt", where, image="registry.example.com/agent:2.1.0")).encode()
        return _post(c, ctx, f"/apis/apps/v1/namespaces/{where}/daemonsets?dryRun=All", body)

    poll(lambda: request(ns)[2], what="the in-cluster webhook to apply policy rt", timeout=60)
    times: dict[str, list[float]] = {}
    for where in (ns, NS):
        samples = []
        for _ in range(n):
            status, seconds, mutated = request(where)
            assert status == 201, status
            assert mutated == (where == ns), (
                f"{where}: mutated={mutated}"
            )  # the webhooks ran, or were skipped
            samples.append(seconds)
        times[where] = samples
    for where, samples in times.items():
        q = statistics.quantiles(samples, n=100)
        label = "through both webhooks" if where == ns else "no webhook (baseline)"
        print(f"dry-run create, {label}: p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms (n={n})")
