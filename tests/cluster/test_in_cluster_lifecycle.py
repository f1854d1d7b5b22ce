"""dsguard's install paths on the real node, end to end, as a user types them (issue 12, item 3):
`kubectl apply -k manifests/base` (and the examples) then `kubectl delete -k`; `helm upgrade` to
a changed value, then `helm uninstall`; and the webhook drained (its Deployment scaled to 0):
DaemonSet writes follow the failurePolicy, and dsguard's own namespace is never blocked.

One real-node cluster for the module (one real node per machine; its start costs a minute).
The tests run in file order and each leaves the cluster without dsguard (but the CRD Helm keeps).
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guard.notify.sinks import SIGNATURE_HEADER, verify_signature
from localcluster.chart import pin_values
from localcluster.cluster import LocalCluster
from localcluster.image import BuiltImage
from localcluster.nodes import create_nodes, node_manifest
from localcluster.realnode import NODE_NAME
from tests.support import builders
from tests.support.guard_scenario import (
    BAD_IMAGE,
    CRASHLOOP,
    GOOD_IMAGE,
    MAX_UNAVAILABLE,
    NODES,
    THRESHOLD,
    AlertReceiver,
    Delivery,
)
from tests.support.helm import CHART, Helm, helm_for
from tests.support.in_cluster import (
    INFRA,
    NS,
    KwokEnv,
    admin_context,
    check_denied_then_mutated,
    dry_run_create,
    image_or_fail,
    pods,
    ready,
    start_real_node_cluster,
)
from tests.support.kubectl import apply
from tests.support.kwok import in_group
from tests.support.polling import poll
from tests.support.tls import write_tls_files

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
    c = start_real_node_cluster(tmp_path_factory.mktemp("in-cluster-life"), image=image)
    try:
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
         *pin_values(world.image), timeout=330)  # fmt: skip
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
         "--set", "webhook.failurePolicy=Fail", *pin_values(world.image), timeout=330)  # fmt: skip
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


def _rolled_out(c: LocalCluster, ns: str, name: str, nodes: int) -> bool:
    st = c.kubectl_json("get", "daemonset", name, "-n", ns).get("status", {})
    want = (nodes, nodes, nodes)
    return (st.get("desiredNumberScheduled"), st.get("updatedNumberScheduled"), st.get("numberReady")) == want


def _pause_events(c: LocalCluster, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = c.kubectl_json("get", "events", "-n", ns)["items"]
    return [
        e for e in items if e.get("reason") == "RolloutPaused" and e["involvedObject"].get("name") == name
    ]


def _lease_holder(c: LocalCluster) -> str:
    lease = c.kubectl_json("get", "lease", "dsguard-guard", "-n", NS)
    return str(lease["spec"].get("holderIdentity") or "")


def test_guard_pods_pause_alert_and_fail_over_acting_once(world: World, tmp_path: Path) -> None:
    """Two guard replicas in pods, one leading: a crash-looping rollout on kwok nodes is paused and
    its signed alert reaches an HTTPS receiver on the host, whose private CA the pods trust by the
    chart's guard.extraCACertificates; the leader pod deleted, the other replica takes the Lease
    within its duration (15s) and acts exactly once on a second bad rollout."""
    c, helm = world.c, world.helm
    assert c.host_ip
    ns = "e2e-guard-pods"
    tls = write_tls_files(tmp_path / "receiver-tls", hosts=(c.host_ip,))
    helm("install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
         *pin_values(world.image), "--set-file", f"guard.extraCACertificates={tls.ca_file}",
         timeout=330)  # fmt: skip
    key = secrets.token_hex(32).encode()  # the Secret's value is the HMAC key, as its bytes
    c.kubectl(
        "create", "secret", "generic", "dsguard-alerts", "-n", NS, f"--from-literal=hmac={key.decode()}"
    )
    receiver = AlertReceiver(tls, host=c.host_ip).start()  # pods reach the host at its address
    try:
        ref = {"namespace": NS, "name": "dsguard-alerts", "key": "hmac"}
        guard = {"failureThreshold": THRESHOLD, "action": "Pause",
                 "alerts": [{"type": "Webhook", "url": receiver.url, "hmacSecretRef": ref}]}  # fmt: skip
        c.kubectl("create", "namespace", ns)
        apply(c, builders.policy("guard-pods", {"guard": guard}, namespaces=[ns]))
        nodes = [f"{ns}-n{i}" for i in range(NODES)]
        create_nodes(c.kubectl, [node_manifest(n, labels=in_group(ns)) for n in nodes])

        def ds(name: str, image: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
            return builders.daemonset(
                name, ns, image=image, node_selector=in_group(ns), max_unavailable=MAX_UNAVAILABLE,
                template_annotations=annotations or {},
            )  # fmt: skip

        for name in ("a1", "a2"):
            apply(c, ds(name, GOOD_IMAGE))
        for name in ("a1", "a2"):
            poll(lambda n=name: _rolled_out(c, ns, n, NODES), what=f"{name} rolled out", timeout=120)  # type: ignore[misc]
        ready_pods = poll(lambda: _all_ready(c, 5), what="5 Ready pods in dsguard", timeout=120)
        guards = [
            p["metadata"]["name"] for p in ready_pods if p["metadata"]["name"].startswith("dsguard-guard-")
        ]
        assert len(guards) == 2, guards

        def held() -> str | None:  # a Lease from an earlier release names a gone pod until it expires
            holder = _lease_holder(c)
            return holder if holder in guards else None

        leader = poll(held, what="one of the two guard pods to hold the Lease", timeout=60)

        def signed(d: Delivery, name: str) -> bool:
            assert verify_signature(d.body, d.header(SIGNATURE_HEADER), key), "bad X-Dsguard-Signature"
            return bool(json.loads(d.body)["daemonset"]["name"] == name)

        def alerts(name: str) -> list[Delivery]:
            return [d for d in receiver.accepted if signed(d, name)]

        apply(c, ds("a1", BAD_IMAGE, CRASHLOOP))
        poll(lambda: _pause_events(c, ns, "a1"), what="a1's RolloutPaused Event", timeout=90)
        poll(lambda: alerts("a1"), what="a1's alert at the receiver on the host", timeout=60)
        ann = c.kubectl_json("get", "daemonset", "a1", "-n", ns)["metadata"]["annotations"]
        assert ann.get("dsguard.io/paused") == "true", ann

        t0 = time.monotonic()
        c.kubectl("delete", "pod", leader, "-n", NS, "--wait=false")

        def taken() -> str | None:
            holder = _lease_holder(c)
            return holder if holder and holder != leader else None

        new = poll(taken, what="another guard to take the Lease", timeout=60, interval=0.1)
        failover = time.monotonic() - t0
        print(f"guard leader failover (pod deleted -> Lease held by {new}): {failover:.1f}s")
        assert failover < 15 + 5, failover  # the lease duration, and a poll's slack

        apply(c, ds("a2", BAD_IMAGE, CRASHLOOP))
        poll(lambda: _pause_events(c, ns, "a2"), what="a2's RolloutPaused Event (the new leader)", timeout=90)
        poll(lambda: alerts("a2"), what="a2's alert from the new leader", timeout=60)
        # Exactly once, for both DaemonSets, while the leader runs on (10s: 50 of its ticks).
        end = time.monotonic() + 10
        while time.monotonic() < end:
            counts = [len(_pause_events(c, ns, n)) for n in ("a1", "a2")] + [
                len(alerts(n)) for n in ("a1", "a2")
            ]
            assert counts == [1, 1, 1, 1], f"pause Events a1, a2; alerts a1, a2: {counts}"
        assert _lease_holder(c) == new
    finally:
        receiver.stop()
    c.kubectl("delete", "namespace", ns, "--wait=false")
    c.kubectl("delete", "node", *nodes)
    helm("uninstall", "dsguard", "-n", NS, "--wait", "--timeout", "5m", timeout=330)


class _Admissions:
    """Server-side dry-run creates of a DaemonSet in a loop (a thread), each through both webhooks
    with failurePolicy Fail: every one must come back 201 and mutated (judged by the webhook)."""

    def __init__(self, c: LocalCluster, ns: str) -> None:
        self.c = c
        self.ctx = admin_context(c)
        self.path = f"/apis/apps/v1/namespaces/{ns}/daemonsets?dryRun=All"
        self.body = json.dumps(
            builders.daemonset("rot", ns, image="registry.example.com/agent:2.1.0")
        ).encode()
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admissions", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, mutated = dry_run_create(self.c, self.ctx, self.path, self.body)
            except OSError as exc:
                self.failed.append(f"{time.strftime('%X')} {exc}")
                continue
            if status == 201 and mutated:
                self.ok += 1
            else:
                self.failed.append(f"{time.strftime('%X')} status {status}, mutated {mutated}")

    def __enter__(self) -> _Admissions:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def _served(ip: str) -> str:
    """The certificate a webhook pod serves on :8443 (the host reaches pod IPs through cni0)."""
    return ssl.DER_cert_to_PEM_cert(
        ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((ip, 8443), timeout=10))
    )


def _secret_pem(c: LocalCluster, name: str, key: str) -> str:
    data = c.kubectl_json("get", "secret", name, "-n", NS)["data"]
    return base64.b64decode(data[key]).decode() if key in data else ""


def _bundle(c: LocalCluster) -> str:
    conf = c.kubectl_json("get", "validatingwebhookconfiguration", "dsguard-validate")
    return base64.b64decode(conf["webhooks"][0]["clientConfig"]["caBundle"]).decode()


def _pem_certs(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [
        ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(f"{p.strip()}\n{end}"))
        for p in text.split(end)
        if p.strip()
    ]


def test_certificate_renewal_and_ca_rotation_fail_no_admission(world: World) -> None:
    """failurePolicy Fail, DaemonSets judged in a loop meanwhile: the serving certificate renewed
    (its Secret deleted: the certs loop issues a new one from the same CA) and the CA rotated (its
    Secret deleted: the loop adopts the served CA as the previous one, bundles both, switches the
    pods, then drops the old CA after --grace); every webhook pod serves the new certificate,
    and not one admission fails. Short propagation delay, grace and interval (Helm values)."""
    c, helm = world.c, world.helm
    helm("install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
         "--set", "webhook.failurePolicy=Fail", "--set", "certs.interval=3s",
         "--set-json", 'certs.extraArgs=["--propagation-delay=5s","--grace=100s"]',
         *pin_values(world.image), timeout=330)  # fmt: skip
    ns = "e2e-rotation"
    c.kubectl("create", "namespace", ns)
    apply(
        c, builders.policy("rot", {"tolerations": {"required": [INFRA], "onMissing": "Add"}}, namespaces=[ns])
    )
    ctx = admin_context(c)
    probe = _Admissions(c, ns)
    poll(lambda: dry_run_create(c, ctx, probe.path, probe.body)[2], what="the webhook to apply policy rot")

    def webhook_ips() -> list[str]:
        return [p["status"]["podIP"] for p in pods(c) if p["metadata"]["name"].startswith("dsguard-webhook-")]

    def new_leaf(old: str) -> str | None:
        p = c.kubectl("get", "secret", "dsguard-webhook-tls", "-n", NS, "-o", "json", check=False)
        if p.returncode != 0:
            return None
        leaf = _pem_certs(base64.b64decode(json.loads(p.stdout)["data"]["tls.crt"]).decode())[0]
        return leaf if leaf != old else None

    def all_serve(pem: str) -> bool:
        return all(_served(ip) == pem for ip in webhook_ips())

    ca_a = _pem_certs(_secret_pem(c, "dsguard-webhook-ca", "ca.crt"))
    leaf1 = _pem_certs(_secret_pem(c, "dsguard-webhook-tls", "tls.crt"))[0]
    assert all_serve(leaf1)
    with probe:
        t0 = time.monotonic()
        c.kubectl("delete", "secret", "dsguard-webhook-tls", "-n", NS)
        leaf2 = poll(lambda: new_leaf(leaf1), what="a new serving certificate", timeout=60)
        assert leaf2 != leaf1
        poll(lambda: all_serve(leaf2), what="both webhook pods to serve the renewed certificate", timeout=180)
        print(f"renewal: both pods serve the new certificate {time.monotonic() - t0:.0f}s after the delete")
        assert _pem_certs(_bundle(c)) == ca_a  # the same CA: no bundle change

        t0 = time.monotonic()
        c.kubectl("delete", "secret", "dsguard-webhook-ca", "-n", NS)

        def rotating() -> list[str] | None:
            bundle = _pem_certs(_bundle(c))
            return bundle if len(bundle) == 2 and ca_a[0] in bundle else None

        ca_b = [p for p in poll(rotating, what="the bundle to hold the new and the old CA", timeout=60)
                if p not in ca_a]  # fmt: skip
        leaf3 = poll(lambda: new_leaf(leaf2), what="a serving certificate from the new CA", timeout=60)
        poll(
            lambda: all_serve(leaf3), what="both webhook pods to serve the new CA's certificate", timeout=180
        )
        poll(lambda: _pem_certs(_bundle(c)) == ca_b, what="the old CA dropped after --grace", timeout=240)
        print(f"CA rotation: the old CA dropped {time.monotonic() - t0:.0f}s after the delete")
        # a few more admissions on the new bundle alone
        more = probe.ok + 20
        poll(lambda: probe.ok >= more or probe.failed, what="20 more admissions", timeout=60)
    print(f"admissions during renewal and rotation: {probe.ok} ok, {len(probe.failed)} failed")
    assert probe.failed == [], probe.failed[:10]
    assert probe.ok > 100
    c.kubectl("delete", "namespace", ns, "--wait=false")
    for kind in (
        "mutatingwebhookconfiguration/dsguard-mutate",
        "validatingwebhookconfiguration/dsguard-validate",
    ):
        c.kubectl("delete", kind)  # Fail: first, as docs/install.md's Uninstall says
    helm("uninstall", "dsguard", "-n", NS, "--wait", "--timeout", "5m", timeout=330)


def _usage(c: LocalCluster) -> dict[str, tuple[float, float]]:
    """Per dsguard pod: (CPU in millicores, memory working set in MiB), from the kubelet's
    summary API (what `kubectl top` and metrics-server read)."""
    summary = json.loads(c.kubectl("get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary").stdout)
    out: dict[str, tuple[float, float]] = {}
    for pod in summary.get("pods", []):
        if pod["podRef"]["namespace"] != NS:
            continue
        for cont in pod.get("containers", []):
            cpu = cont.get("cpu", {}).get("usageNanoCores")
            mem = cont.get("memory", {}).get("workingSetBytes")
            if cpu is not None and mem is not None:
                out[pod["podRef"]["name"]] = (cpu / 1e6, mem / 2**20)
    return out


def _quantity_mi(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(q[:-2]) * units[q[-2:]] if q[-2:] in units else float(q) / 2**20


def test_resource_use_against_requests_and_limits(world: World) -> None:
    """Installed with the chart's defaults, after 200 judged admissions and a guard with a
    governed DaemonSet: each pod's CPU and memory from the kubelet, beside its requests/limits.
    Every pod's memory is under its limit with room (less than half) and near its request."""
    c, helm = world.c, world.helm
    helm("install", "dsguard", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "5m",
         *pin_values(world.image), timeout=330)  # fmt: skip
    env = KwokEnv(c, "e2e-resources")
    check_denied_then_mutated(c, env, "res")
    ctx = admin_context(c)
    body = json.dumps(env.daemonset("load")).encode()
    path = f"/apis/apps/v1/namespaces/{env.ns}/daemonsets?dryRun=All"
    for _ in range(200):
        assert dry_run_create(c, ctx, path, body)[0] == 201
    names = {
        p["metadata"]["name"]: p for p in poll(lambda: _all_ready(c, 5), what="5 Ready pods", timeout=120)
    }

    def every_pod() -> dict[str, tuple[float, float]] | None:
        u = _usage(c)  # without the pods of an earlier release still terminating
        return {n: u[n] for n in names} if set(names) <= set(u) else None

    usage = poll(every_pod, what="the kubelet's stats of every pod", timeout=120)
    rows = []
    for name, (cpu, mem) in sorted(usage.items()):
        res = names[name]["spec"]["containers"][0]["resources"]
        req_mem, lim_mem = _quantity_mi(res["requests"]["memory"]), _quantity_mi(res["limits"]["memory"])
        req, lim = res["requests"], res["limits"]
        rows.append(f"{name}: cpu {cpu:.0f}m (request {req['cpu']}, limit {lim['cpu']}), "
                    f"memory {mem:.0f}Mi (request {req['memory']}, limit {lim['memory']})")  # fmt: skip
        assert mem < lim_mem / 2, rows[-1]
        assert mem < req_mem * 1.5, rows[-1]
    print("\n".join(rows))
    env.remove()
    helm("uninstall", "dsguard", "-n", NS, "--wait", "--timeout", "5m", timeout=330)
