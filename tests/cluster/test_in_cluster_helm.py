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

import json
import statistics
import time
from collections.abc import Iterator

import pytest

from localcluster.chart import pin_values
from localcluster.cluster import LocalCluster
from localcluster.image import BuiltImage
from localcluster.realnode import NODE_NAME
from tests.support import builders
from tests.support.helm import CHART, helm_for
from tests.support.in_cluster import (
    INFRA,
    NS,
    KwokEnv,
    admin_context,
    check_denied_then_mutated,
    dry_run_create,
    image_or_fail,
    pods,
    start_real_node_cluster,
)
from tests.support.kubectl import apply
from tests.support.polling import poll


class Installed:
    def __init__(self, cluster: LocalCluster, image: BuiltImage, install_seconds: float) -> None:
        self.cluster = cluster
        self.image = image
        self.install_seconds = install_seconds


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    image = image_or_fail()
    # The starting real node imports the latest built dsguard image itself (issue 12, item 2).
    c = start_real_node_cluster(tmp_path_factory.mktemp("in-cluster"), image=image)
    try:
        helm = helm_for(tmp_path_factory.mktemp("helm-home"), c.kubeconfig)
        t0 = time.monotonic()
        helm("install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
             *pin_values(image), timeout=330)  # fmt: skip
        yield Installed(c, image, time.monotonic() - t0)
    finally:
        c.stop()


def test_helm_install_every_pod_ready_on_the_real_node(installed: Installed) -> None:
    c = installed.cluster
    ps = pods(c)
    assert len(ps) == 5, [p["metadata"]["name"] for p in ps]  # 2 webhooks, 2 guards, 1 certs
    for p in ps:
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


def test_daemonsets_are_mutated_and_denied_through_the_service(installed: Installed) -> None:
    check_denied_then_mutated(
        installed.cluster, KwokEnv(installed.cluster, "e2e-in-cluster"), "in-cluster-deny"
    )


def test_webhook_round_trip_through_the_service(installed: Installed) -> None:
    """p50/p99 of 200 server-side dry-run creates of an allowed DaemonSet, judged by both webhooks
    through the Service, beside 200 in the webhooks' excluded namespace (dsguard's own)."""
    c = installed.cluster
    ctx = admin_context(c)
    n = 200
    ns = "rt-judged"
    c.kubectl("create", "namespace", ns)
    apply(
        c, builders.policy("rt", {"tolerations": {"required": [INFRA], "onMissing": "Add"}}, namespaces=[ns])
    )

    def request(where: str) -> tuple[int, float, bool]:
        body = json.dumps(builders.daemonset("rt", where, image="registry.example.com/agent:2.1.0")).encode()
        return dry_run_create(c, ctx, f"/apis/apps/v1/namespaces/{where}/daemonsets?dryRun=All", body)

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
