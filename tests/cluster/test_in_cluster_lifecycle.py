"""dsguard's install paths on the real node, end to end, as a user types them (issue 12, item 3):
`kubectl apply -k manifests/base` (and the examples) then `kubectl delete -k`; `helm upgrade` to
a changed value, then `helm uninstall`; and the webhook drained (its Deployment scaled to 0):
DaemonSet writes follow the failurePolicy, and dsguard's own namespace is never blocked.

One real-node cluster for the module (one real node per machine; its start costs a minute).
The tests run in file order and each leaves the cluster without dsguard (but the CRD Helm keeps).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import LocalCluster
from localcluster.image import BuiltImage
from localcluster.realnode import NODE_NAME
from tests.support.helm import CHART, Helm, helm_for
from tests.support.in_cluster import (
    NS,
    KwokEnv,
    check_denied_then_mutated,
    helm_pin_args,
    image_or_fail,
    pods,
    ready,
    start_real_node_cluster,
)
from tests.support.kubectl import apply
from tests.support.polling import poll

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "manifests" / "base"
EXAMPLES = REPO / "manifests" / "examples"
CRD = "daemonsetpolicies.dsguard.io"
DEPLOYMENTS = ("dsguard-certs", "dsguard-webhook", "dsguard-guard")
CLUSTER_KINDS = (
    "clusterrole,clusterrolebinding,mutatingwebhookconfiguration,validatingwebhookconfiguration,crd"
)


class World:
    def __init__(self, c: LocalCluster, image: BuiltImage, helm: Helm) -> None:
        self.c = c
        self.image = image
        self.helm = helm


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    image = image_or_fail()
    c = start_real_node_cluster(tmp_path_factory.mktemp("in-cluster-life"))
    try:
        assert c.real_node is not None
        assert image.cri_ref in c.real_node.image_refs(), "the real node did not import the built image"
        yield World(c, image, helm_for(tmp_path_factory.mktemp("helm-home"), c.kubeconfig))
    finally:
        c.stop()


def _all_ready(c: LocalCluster, n: int) -> list[dict[str, Any]] | None:
    ps = [p for p in pods(c) if not p["metadata"].get("deletionTimestamp")]
    return ps if len(ps) == n and all(ready(p) for p in ps) else None


def _check_running(c: LocalCluster, image_ref: str) -> None:
    """5 pods Ready on the real node from the image; the certs Deployment wrote the serving Secret
    and put its CA into both webhook configurations."""
    ps = poll(lambda: _all_ready(c, 5), what="5 Ready pods in dsguard", timeout=120)
    for p in ps:
        assert p["spec"]["nodeName"] == NODE_NAME, p["metadata"]["name"]
        assert p["spec"]["containers"][0]["image"] == image_ref
    secret = c.kubectl_json("get", "secret", "dsguard-webhook-tls", "-n", NS)
    assert secret["type"] == "kubernetes.io/tls"
    for kind, name in (("mutatingwebhookconfiguration", "dsguard-mutate"),
                       ("validatingwebhookconfiguration", "dsguard-validate")):  # fmt: skip
        conf = c.kubectl_json("get", kind, name)
        assert conf["webhooks"][0]["clientConfig"].get("caBundle"), f"{name}: no caBundle"


def _cluster_scoped_left(c: LocalCluster) -> list[str]:
    names = c.kubectl("get", CLUSTER_KINDS, "-o", "name").stdout.split()
    return sorted(n for n in names if "dsguard" in n)


def _namespace_gone(c: LocalCluster) -> bool:
    return c.kubectl("get", "namespace", NS, check=False).returncode != 0


def test_kustomize_apply_then_delete_leaves_nothing(world: World) -> None:
    c = world.c
    # The base names `image: dsguard:0.1.0`; `make image` tags what it builds the same way.
    assert world.image.ref == "dsguard:0.1.0", f"the base's image is dsguard:0.1.0, built {world.image.ref}"
    t0 = time.monotonic()
    c.kubectl("apply", "-k", str(BASE))
    c.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    c.kubectl("apply", "-k", str(EXAMPLES))
    c.kubectl("-n", NS, "rollout", "status", *[f"deploy/{d}" for d in DEPLOYMENTS], "--timeout=300s",
              timeout=320)  # fmt: skip
    _check_running(c, world.image.ref)
    print(f"kubectl apply -k manifests/base: all Ready in {time.monotonic() - t0:.1f}s")
    assert len(c.kubectl_json("get", "daemonsetpolicies")["items"]) == 3  # the examples

    env = KwokEnv(c, "e2e-kustomize")  # after the rollout: the base's pods carry no node pinning
    check_denied_then_mutated(c, env, "kustomize-deny")
    env.remove()

    t0 = time.monotonic()
    c.kubectl("delete", "-k", str(EXAMPLES))
    c.kubectl("delete", "-k", str(BASE), "--timeout=240s", timeout=260)
    poll(lambda: _namespace_gone(c), what="namespace dsguard to be gone", timeout=120)
    print(f"kubectl delete -k manifests/base: gone in {time.monotonic() - t0:.1f}s")
    # docs/install.md, Uninstall: the base's delete takes the CRD (and every policy) along.
    assert _cluster_scoped_left(c) == []


def test_helm_upgrade_rolls_the_pods_then_uninstall_keeps_only_the_crd(world: World) -> None:
    c, helm = world.c, world.helm
    t0 = time.monotonic()
    helm("install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
         *helm_pin_args(world.image), timeout=330)  # fmt: skip
    print(f"helm install --wait: {time.monotonic() - t0:.1f}s")
    _check_running(c, world.image.ref)
    conf = c.kubectl_json("get", "validatingwebhookconfiguration", "dsguard-validate")
    assert conf["webhooks"][0]["failurePolicy"] == "Ignore"  # the chart's default (docs/install.md)

    def guards() -> list[dict[str, Any]]:
        return [p for p in pods(c) if p["metadata"]["labels"].get("app.kubernetes.io/component") == "guard"]

    before = {p["metadata"]["name"] for p in guards()}
    t0 = time.monotonic()
    helm("upgrade", "dsguard", str(CHART), "-n", NS, "--reuse-values", "--wait", "--timeout", "5m",
         "--set-json", 'guard.extraArgs=["--log-format=json"]', timeout=330)  # fmt: skip

    def rolled() -> list[dict[str, Any]] | None:
        now = [p for p in guards() if not p["metadata"].get("deletionTimestamp")]
        fresh = [p for p in now if p["metadata"]["name"] not in before and ready(p)]
        return fresh if len(fresh) == 2 and len(now) == 2 else None

    fresh = poll(rolled, what="the guard pods to be replaced by the upgrade", timeout=180)
    print(f"helm upgrade (a guard flag) --wait, pods rolled: {time.monotonic() - t0:.1f}s")
    assert "--log-format=json" in fresh[0]["spec"]["containers"][0]["args"]
    # The change took effect: the new guard logs one JSON object per line.
    log = c.kubectl("logs", "-n", NS, fresh[0]["metadata"]["name"]).stdout.splitlines()
    assert log, "the upgraded guard logged nothing"
    assert all(isinstance(json.loads(line), dict) for line in log[:5]), log[:5]

    t0 = time.monotonic()
    helm("uninstall", "dsguard", "-n", NS, "--wait", "--timeout", "5m", timeout=330)
    poll(lambda: not pods(c), what="dsguard's pods to be gone", timeout=120)
    print(f"helm uninstall --wait, pods gone: {time.monotonic() - t0:.1f}s")
    assert _cluster_scoped_left(c) == [f"customresourcedefinition.apiextensions.k8s.io/{CRD}"]
    left = c.kubectl("get", "all,configmap,secret,serviceaccount,role,rolebinding,lease,pdb",
                     "-n", NS, "-o", "name").stdout.split()  # fmt: skip
    # What dsguard's pods wrote (not Helm's to delete) stays with the namespace Helm made:
    # docs/install.md, Uninstall (`kubectl delete namespace dsguard` takes them).
    written = [
        "secret/dsguard-webhook-ca",
        "secret/dsguard-webhook-tls",
        "lease.coordination.k8s.io/dsguard-guard",
    ]
    assert sorted(left) == sorted(["configmap/kube-root-ca.crt", "serviceaccount/default", *written]), left


def test_drained_webhook_follows_failure_policy_and_never_blocks_its_namespace(world: World) -> None:
    """Installed with failurePolicy Fail (a Helm value), the webhook Deployment scaled to 0: a
    DaemonSet write elsewhere is refused, in dsguard's namespace it passes (the namespaceSelector);
    after the documented emergency switch to Ignore, the write elsewhere passes unjudged."""
    c, helm = world.c, world.helm
    helm("install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
         "--set", "webhook.failurePolicy=Fail", *helm_pin_args(world.image), timeout=330)  # fmt: skip
    env = KwokEnv(c, "e2e-drain")
    check_denied_then_mutated(c, env, "drain-deny")  # the webhook answers through the Service

    c.kubectl("scale", "deployment", "dsguard-webhook", "-n", NS, "--replicas=0")
    webhook = {"app.kubernetes.io/component": "webhook"}
    poll(lambda: not [p for p in pods(c) if webhook.items() <= p["metadata"]["labels"].items()],
         what="both webhook pods to be gone", timeout=120)  # fmt: skip
    other = env.daemonset("other")

    def refused() -> subprocess.CompletedProcess[str] | None:
        q = apply(c, other, check=False)
        return q if q.returncode != 0 and "failed calling webhook" in q.stderr else None

    p = poll(refused, what="a DaemonSet write to be refused (Fail, no webhook endpoint)", timeout=60)
    print("refused:", p.stderr.strip())
    assert c.kubectl("get", "daemonset", "other", "-n", env.ns, check=False).returncode != 0
    # dsguard's own namespace is never judged: the write passes even now.
    own = apply(c, env.daemonset("own", ns=NS), check=False)
    assert own.returncode == 0, own.stderr
    c.kubectl("delete", "daemonset", "own", "-n", NS)

    for kind, name in (("mutatingwebhookconfiguration", "dsguard-mutate"),
                       ("validatingwebhookconfiguration", "dsguard-validate")):  # fmt: skip
        c.kubectl("patch", kind, name, "--type=json",
                  "-p", '[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]')  # fmt: skip
    poll(lambda: apply(c, other, check=False).returncode == 0,
         what="the write to pass with failurePolicy Ignore", timeout=60)  # fmt: skip
    stored = c.kubectl_json("get", "daemonset", "other", "-n", env.ns)
    assert "tolerations" not in stored["spec"]["template"]["spec"]  # unjudged: the policy bypass
    env.remove()
    helm("uninstall", "dsguard", "-n", NS, "--wait", "--timeout", "5m", timeout=330)
