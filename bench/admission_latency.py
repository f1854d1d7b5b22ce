"""What dsguard adds to every DaemonSet write, through the real apiserver, against the built-in
ValidatingAdmissionPolicy + MutatingAdmissionPolicy doing the same job (CEL, in-process).

Starts a local control plane (localcluster.LocalCluster in a temp dir, no DaemonSet controller:
nothing but the writes is measured), 24 Node objects (tainted control-plane, infra and GPU pools;
kubelets on 1.37 and 1.36), and five set-ups side by side, each scoped to a fresh namespace of
its own by a namespaceSelector (so all five are registered before the clock starts and every
round hits all five alike):

  floor       no webhook, no policy: the apiserver's own cost of a DaemonSet create / update
  vap         bench/cel/node-agent-policies.yaml: a MutatingAdmissionPolicy (one JSONPatch,
              reinvocationPolicy Never) adds the tolerations and clamps maxUnavailable; a
              ValidatingAdmissionPolicy checks tolerations, the cap and the image versions
  dsguard     `dsguard webhook` on the host (as the cluster tests run it), /mutate + /validate,
              the three DaemonSetPolicies the CEL policies imitate (--policy-file)
  dsguard-20  another `dsguard webhook` with those three and 17 more that all match
  minimal     bench/minimal_webhook.py registered the same way (/mutate and /validate: parse,
              echo the uid, allow): what any aiohttp webhook costs through the apiserver
  dsguard-svc (--in-cluster) dsguard as users run it: `helm install` of manifests/helm/dsguard
              on the cluster's real node (its image built from the Dockerfile, cached; 2 webhook
              pods, 1 guard with --no-audit: no writes of its own), the apiserver calling it through its
              Service; the same three policies as DaemonSetPolicy objects. The chart's own
              namespace selector applies: the other set-ups' namespaces carry dsguard.io/exclude.
              The host-run `dsguard` set-up is registered as dsguardhost then (the chart owns
              the dsguard-mutate/-validate names). Needs root (a real node, as `make demo`).

Per round, in a rotating order, one client (keep-alive HTTPS, the admin certificate) creates a
DaemonSet in each set-up's namespace (a realistic node agent missing a required toleration and
with maxUnavailable 25%, so both mutations apply), then updates it (a new image tag: a template
change, judged again); every write is a new object, so dsguard's verdict memo never answers and
its rules run every time. Times are client-side, the full round trip of the POST / PUT. Beside
them, the apiserver's own `apiserver_admission_webhook_admission_duration_seconds` (mean per
webhook call over the timed requests) and dsguard's `dsguard_webhook_review_duration_seconds`.

Before timing, every set-up is probed with server-side dry runs until its mutation and its
denial are seen (registration takes up to ~1.2 s to apply), then warmed up.

    .venv/bin/python bench/admission_latency.py [--n 300] [--warmup 20] [--quick] [--json] [--in-cluster]
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import math
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.webhook_load import AGENT_IMAGE, AGENT_VERSIONS, agent_daemonset  # noqa: E402
from localcluster.binaries import BinariesError  # noqa: E402
from localcluster.chart import CHART, NAMESPACE, pin_values, webhook_pod_metrics  # noqa: E402
from localcluster.cluster import ClusterError, LocalCluster  # noqa: E402
from localcluster.helm import HelmError, HelmRunner, helm_bin_dir  # noqa: E402
from localcluster.image import ImageError, build_image  # noqa: E402
from localcluster.nodes import create_nodes, node_manifest  # noqa: E402
from localcluster.procs import Child, free_port, launch, wait_ready  # noqa: E402
from localcluster.webhook_host import HostWebhook, loopback_tls_files, webhook_configurations  # noqa: E402

SETUPS = ("floor", "vap", "minimal", "dsguard", "dsguard-20")
IN_CLUSTER = "dsguard-svc"  # --in-cluster: the chart on the real node, through its Service
SETUP_LABEL = "bench.dsguard.io/setup"
EXCLUDE_LABEL = "dsguard.io/exclude"  # the chart's opt-out of its webhooks' namespaceSelector
FAIL_OPEN_METRIC = "apiserver_admission_webhook_fail_open_count"
CEL_POLICIES = REPO / "bench" / "cel" / "node-agent-policies.yaml"
WEBHOOK_METRIC = "apiserver_admission_webhook_admission_duration_seconds"
TARGET_ADDED_P50_MS = 2.0
TARGET_P99_MS = 10.0

REQUIRED_TOLERATIONS = [
    {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"},
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]


def policy(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "dsguard.io/v1alpha1",
        "kind": "DaemonSetPolicy",
        "metadata": {"name": name},
        "spec": {
            "match": {"selector": {"matchLabels": {"app.kubernetes.io/component": "node-agent"}}},
            **spec,
        },
    }


def dsguard_policies(count: int) -> list[dict[str, Any]]:
    """The three policies the CEL ones imitate, then count-3 more that all match (the worst case:
    every one is evaluated on every review) and all allow the bench's DaemonSet once mutated."""
    out = [
        policy(
            "node-agents-everywhere",
            {
                "tolerations": {
                    "required": REQUIRED_TOLERATIONS,
                    "onMissing": "Add",
                    "coverage": {"nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}}},
                }
            },
        ),
        policy("gentle-rollouts", {"rollout": {"maxUnavailable": "10%", "onExceed": "Clamp"}}),
        policy("agent-kubelet-compatibility", {"versions": AGENT_VERSIONS}),
    ]
    for i in range(len(out), count):
        kind = i % 3
        if kind == 0:
            spec: dict[str, Any] = {
                "tolerations": {
                    "required": REQUIRED_TOLERATIONS[i % 3 : i % 3 + 1],
                    "onMissing": "Add",
                    "coverage": {"nodeSelector": {"matchLabels": {"kubernetes.io/arch": "amd64"}}},
                }
            }
        elif kind == 1:
            spec = {"rollout": {"maxUnavailable": f"{10 + i}%", "onExceed": "Clamp"}}
        else:
            spec = {
                "versions": {
                    "rules": [
                        {
                            "image": AGENT_IMAGE,
                            "compatibility": [{"kubernetes": f">=1.{20 + i}.0", "versions": f">=7.{i}.0"}],
                        }
                    ]
                }
            }
        out.append(policy(f"extra-{i:02d}", spec))
    return out


def nodes() -> list[dict[str, Any]]:
    out = []
    for i in range(24):
        taints: list[dict[str, str]] = []
        labels = {"topology.kubernetes.io/zone": f"zone-{i % 3}"}
        if i < 3:
            taints = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        elif i < 6:
            taints = [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]
        elif i < 8:
            taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        kubelet = "v1.36.4" if i % 4 == 3 else "v1.37.2"
        out.append(
            node_manifest(f"bench-node-{i:02d}", labels=labels, taints=taints, kubelet_version=kubelet)
        )
    return out


def daemonset(namespace: str, name: str, *, image_tag: str = "7.52.1") -> dict[str, Any]:
    """The webhook bench's node agent as a user sends it: no server-set fields; missing the GPU
    toleration and with maxUnavailable 25%, so every set-up's mutation has work to do."""
    ds = copy.deepcopy(agent_daemonset(compliant=False))
    meta = ds["metadata"]
    for key in ("uid", "resourceVersion", "generation", "creationTimestamp"):
        meta.pop(key, None)
    ds.pop("status", None)
    meta.update(name=name, namespace=namespace)
    pod = ds["spec"]["template"]["spec"]
    pod["containers"][1]["ports"][0]["name"] = "trace"  # no duplicate-port-name warning
    for c in pod["containers"] + pod["initContainers"]:
        if c["image"].startswith(f"{AGENT_IMAGE}:"):
            c["image"] = f"{AGENT_IMAGE}:{image_tag}"
    return ds


# --- the apiserver client -------------------------------------------------------------------------


class Api:
    """One keep-alive HTTPS connection to the apiserver as the cluster admin."""

    def __init__(self, cluster: LocalCluster) -> None:
        assert cluster.pki is not None
        ctx = ssl.create_default_context(cafile=str(cluster.pki.ca.cert))
        admin = cluster.pki.clients["admin"]
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        self.conn = http.client.HTTPSConnection("127.0.0.1", cluster.ports.apiserver, context=ctx, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """(status, decoded body, seconds) of one request."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        start = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - start
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, (json.loads(raw) if ctype.startswith("application/json") else raw), elapsed

    def metrics(self) -> str:
        self.conn.request("GET", "/metrics")
        resp = self.conn.getresponse()
        return resp.read().decode()

    def close(self) -> None:
        self.conn.close()


def ds_path(namespace: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/daemonsets" + (f"/{name}" if name else "")


def webhook_calls(metrics_text: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(webhook name, type) -> (count, sum of seconds) of the apiserver's webhook histogram."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != WEBHOOK_METRIC:
            continue
        for s in family.samples:
            key = (s.labels.get("name", ""), s.labels.get("type", ""))
            count, total = out.get(key, (0.0, 0.0))
            if s.name.endswith("_count"):
                count += s.value
            elif s.name.endswith("_sum"):
                total += s.value
            out[key] = (count, total)
    return out


def fail_opens(metrics_text: str) -> dict[str, float]:
    """webhook name -> calls the apiserver let through unjudged (failurePolicy Ignore)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == FAIL_OPEN_METRIC.removesuffix("_count"):
            for s in family.samples:
                if s.name == FAIL_OPEN_METRIC:
                    name = s.labels.get("name", "")
                    out[name] = out.get(name, 0.0) + s.value
    return out


def review_histograms(texts: Sequence[str]) -> dict[str, tuple[float, float]]:
    """review_histogram summed over several webhooks (the in-cluster set-up's pods)."""
    out: dict[str, tuple[float, float]] = {}
    for text in texts:
        for endpoint, (count, total) in review_histogram(text).items():
            c, t = out.get(endpoint, (0.0, 0.0))
            out[endpoint] = (c + count, t + total)
    return out


def review_histogram(metrics_text: str) -> dict[str, tuple[float, float]]:
    """dsguard's own review latency: endpoint -> (count, sum of seconds)."""
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "dsguard_webhook_review_duration_seconds":
            continue
        for s in family.samples:
            count, total = out.get(s.labels["endpoint"], (0.0, 0.0))
            if s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                total = s.value
            out[s.labels["endpoint"]] = (count, total)
    return out


# --- set-ups --------------------------------------------------------------------------------------


def register_cel(cluster: LocalCluster) -> None:
    docs = list(yaml.safe_load_all(CEL_POLICIES.read_text()))
    selector = {"matchLabels": {SETUP_LABEL: "vap"}}
    for kind in ("ValidatingAdmissionPolicy", "MutatingAdmissionPolicy"):
        binding: dict[str, Any] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": f"{kind}Binding",
            "metadata": {"name": "bench-node-agents"},
            "spec": {"policyName": "bench-node-agents", "matchResources": {"namespaceSelector": selector}},
        }
        if kind == "ValidatingAdmissionPolicy":
            binding["spec"]["validationActions"] = ["Deny"]
        docs.append(binding)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


def install_in_cluster(cluster: LocalCluster, workdir: Path) -> None:
    """`helm install` of dsguard's chart on the real node (pinned there; one guard replica without
    the audit, so it writes nothing while the writes are timed), then the three policies as
    DaemonSetPolicy objects, which its webhook reads."""
    image = build_image()  # a cache hit: run() built it before the real node started
    helm = HelmRunner(workdir / "helm", cluster.kubeconfig, helm_bin_dir())
    helm.run(
        "install", "dsguard", str(CHART), "-n", NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m",
        *pin_values(image), "--set", "guard.replicas=1",
        "--set-json", 'guard.extraArgs=["--no-audit", "--log-level=warning"]',
        "--set-json", 'webhook.extraArgs=["--log-level=warning"]', timeout=330,
    )  # fmt: skip
    items = dsguard_policies(3)
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )


def start_webhook(
    cluster: LocalCluster, workdir: Path, setup: str, policies: int, *, name: str = ""
) -> HostWebhook:
    policy_file = workdir / f"{setup}-policies.yaml"
    policy_file.write_text(yaml.safe_dump_all(dsguard_policies(policies), sort_keys=False))
    return HostWebhook(
        cluster,
        workdir=workdir / setup,
        namespace_selector={"matchLabels": {SETUP_LABEL: setup}},
        policy_files=[policy_file],
        extra_args=["--log-level", "warning"],
        name=name or setup.replace("-", ""),
    )


def start_minimal(cluster: LocalCluster, workdir: Path) -> Child:
    """bench/minimal_webhook.py on the host, registered for the `minimal` namespace."""
    tls, ca_pem = loopback_tls_files(workdir / "minimal-tls")
    port = free_port()
    cmd = [
        sys.executable, str(REPO / "bench" / "minimal_webhook.py"), "--tls-cert-file", str(tls["tls.crt"]),
        "--tls-private-key-file", str(tls["tls.key"]), "--port", str(port),
    ]  # fmt: skip
    child = launch(cmd, log=cluster.logs_dir / "minimal-webhook.log", cwd=REPO)
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    wait_ready(
        f"https://127.0.0.1:{port}/readyz", what="minimal webhook", child=child, timeout=30, context=ctx
    )
    docs = webhook_configurations(
        f"https://127.0.0.1:{port}", ca_pem, namespace_selector={"matchLabels": {SETUP_LABEL: "minimal"}},
        name="minimal",
    )  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    return child


def probe_minimal(api: Api, namespace: str, deadline: float) -> None:
    """Dry runs until the apiserver has called both of the minimal webhook's endpoints."""
    seen = {"mutate.minimal.io": False, "validate.minimal.io": False}
    while not all(seen.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"minimal: webhooks not called: {seen}")
        api.call("POST", ds_path(namespace) + "?dryRun=All", daemonset(namespace, "probe"))
        calls = webhook_calls(api.metrics())
        for name in seen:
            seen[name] = any(n == name and count > 0 for (n, _), (count, _) in calls.items())
        if not all(seen.values()):
            time.sleep(0.1)


def probe(api: Api, namespace: str, setup: str, deadline: float) -> None:
    """Dry runs until the set-up's admission is in force: the mutation (the GPU toleration added)
    and a denial (an agent image too old for the kubelets)."""
    mutated = denied = setup == "floor"
    last: list[str] = []
    while not (mutated and denied):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{setup}: admission not in force (mutated={mutated}, denied={denied}); last answers: "
                + " | ".join(last)
            )
        status, body, _ = api.call("POST", ds_path(namespace) + "?dryRun=All", daemonset(namespace, "probe"))
        last = [f"HTTP {status} {json.dumps(body)[:300]}"]
        if status == 201:
            tolerations = body["spec"]["template"]["spec"].get("tolerations") or []
            mutated = any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
        old = daemonset(namespace, "probe-old", image_tag="7.40.0")
        status, body, _ = api.call("POST", ds_path(namespace) + "?dryRun=All", old)
        last.append(f"HTTP {status} {json.dumps(body)[:300]}")
        denied = status in (403, 422) and ("7.40.0" in json.dumps(body) or "7.50.0" in json.dumps(body))
        if not (mutated and denied):
            time.sleep(0.1)
    if setup != "floor":
        return
    status, body, _ = api.call("POST", ds_path(namespace) + "?dryRun=All", daemonset(namespace, "probe"))
    if status != 201 or any(
        t.get("key") == "nvidia.com/gpu" for t in body["spec"]["template"]["spec"].get("tolerations") or []
    ):
        raise RuntimeError(f"floor: the DaemonSet was changed by admission: HTTP {status}")


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Timings:
    create_ms: list[float] = field(default_factory=list)
    update_ms: list[float] = field(default_factory=list)

    @property
    def all_ms(self) -> list[float]:
        return self.create_ms + self.update_ms


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rounds(api: Api, namespaces: Mapping[str, str], count: int, prefix: str) -> dict[str, Timings]:
    """count rounds; in each, every set-up (rotating order) creates one DaemonSet and updates it."""
    out = {s: Timings() for s in namespaces}
    order = list(namespaces)
    for i in range(count):
        turn = order[i % len(order) :] + order[: i % len(order)]
        for setup in turn:
            ns = namespaces[setup]
            name = f"{prefix}-{i:04d}"
            status, body, took = api.call("POST", ds_path(ns), daemonset(ns, name))
            if status != 201:
                raise RuntimeError(f"{setup}: create {ns}/{name}: HTTP {status}: {body}")
            out[setup].create_ms.append(took * 1000)
            update = daemonset(ns, name, image_tag="7.52.2")
            update["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
            status, body, took = api.call("PUT", ds_path(ns, name), update)
            if status != 200:
                raise RuntimeError(f"{setup}: update {ns}/{name}: HTTP {status}: {body}")
            out[setup].update_ms.append(took * 1000)
    return out


#: What the chart's pods need on the real node besides the bench's minimum (Deployments, their
#: ReplicaSets, the Service's endpoints, the kube-root-ca.crt ConfigMap their token volume mounts).
IN_CLUSTER_CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "root-ca-certificate-publisher-controller",
)


def _texts_of(hook: HostWebhook) -> Callable[[], list[str]]:
    return lambda: [hook.metrics()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    in_cluster: bool = args.in_cluster
    if in_cluster:
        build_image()  # first: a starting real node imports the latest built image itself
    with tempfile.TemporaryDirectory(prefix="dsguard-admission-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        cluster = LocalCluster(
            workdir / "cluster",
            # No DaemonSet controller: no pods, revisions or status writes beside the timed ones. The
            # node lifecycle controller lifts the not-ready taint the apiserver puts on new nodes.
            controllers=("namespace-controller", "serviceaccount-controller", "node-lifecycle-controller")
            + (IN_CLUSTER_CONTROLLERS if in_cluster else ()),
            real_node=in_cluster,
            startup_timeout=240 if in_cluster else 120,
        )
        stack.callback(cluster.stop)
        cluster.start()
        create_nodes(cluster.kubectl, nodes())
        if in_cluster:
            install_in_cluster(cluster, workdir)
        register_cel(cluster)
        minimal = start_minimal(cluster, workdir)
        stack.callback(minimal.stop, 5)
        hooks = {
            "dsguard": stack.enter_context(
                start_webhook(cluster, workdir, "dsguard", 3, name="dsguardhost" if in_cluster else "")
            ),
            "dsguard-20": stack.enter_context(start_webhook(cluster, workdir, "dsguard-20", 20)),
        }
        metrics: dict[str, Callable[[], list[str]]] = {s: _texts_of(h) for s, h in hooks.items()}
        setups: tuple[str, ...] = SETUPS
        if in_cluster:
            setups += (IN_CLUSTER,)
            metrics[IN_CLUSTER] = lambda: list(webhook_pod_metrics(cluster).values())
        # Fresh namespaces: one re-created after a delete makes NamespaceLifecycle look it up live.
        namespaces = {s: f"bench-{s}-{run_id}" for s in setups}

        def labels(setup: str) -> dict[str, str]:
            if in_cluster and setup != IN_CLUSTER:  # the in-cluster webhooks judge no other set-up
                return {SETUP_LABEL: setup, EXCLUDE_LABEL: "true"}
            return {SETUP_LABEL: setup}

        cluster.kubectl(
            "apply", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels(s)}}
                for s, ns in namespaces.items()
            ]}),
        )  # fmt: skip
        api = Api(cluster)
        stack.callback(api.close)
        deadline = time.monotonic() + 60
        for setup, ns in namespaces.items():
            if setup == "minimal":
                probe_minimal(api, ns, deadline)
            else:
                probe(api, ns, setup, deadline)
        rounds(api, namespaces, args.warmup, "warm")
        text = api.metrics()
        before, opened_before = webhook_calls(text), fail_opens(text)
        hooks_before = {s: review_histograms(m()) for s, m in metrics.items()}
        timings = rounds(api, namespaces, args.n, "ds")
        text = api.metrics()
        after, opened = webhook_calls(text), fail_opens(text)
        hooks_after = {s: review_histograms(m()) for s, m in metrics.items()}
        let_through = {
            n: c - opened_before.get(n, 0.0) for n, c in opened.items() if c > opened_before.get(n, 0.0)
        }
        if let_through:  # the chart's failurePolicy Ignore: a failed call would pass unjudged, and fast
            raise RuntimeError(f"webhook calls failed open during the timed rounds: {let_through}")
        if not minimal.alive():
            raise RuntimeError(f"minimal webhook died:\n{minimal.tail(20)}")
        for setup, hook in hooks.items():
            if hook.child is None or not hook.child.alive():
                raise RuntimeError(f"{setup}: dsguard webhook died:\n{hook.log_tail()}")
    apiserver_ms: dict[str, dict[str, float]] = {}
    for (name, kind), (count, total) in after.items():
        c0, t0 = before.get((name, kind), (0.0, 0.0))
        if count - c0 > 0:
            apiserver_ms.setdefault(name, {})[kind] = round((total - t0) / (count - c0) * 1000, 3)
    handler_ms: dict[str, dict[str, float]] = {}
    for setup in metrics:
        for endpoint, (count, total) in hooks_after[setup].items():
            c0, t0 = hooks_before[setup].get(endpoint, (0.0, 0.0))
            if count - c0 > 0:
                handler_ms.setdefault(setup, {})[endpoint] = round((total - t0) / (count - c0) * 1000, 3)
    return summarize(args, timings, apiserver_ms, handler_ms)


def summarize(
    args: argparse.Namespace,
    timings: Mapping[str, Timings],
    apiserver_ms: Mapping[str, Mapping[str, float]],
    handler_ms: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    floor = timings["floor"]
    rows = {}
    for setup, t in timings.items():
        rows[setup] = {
            "p50_ms": round(pct(t.all_ms, 50), 2),
            "p99_ms": round(pct(t.all_ms, 99), 2),
            "create_p50_ms": round(pct(t.create_ms, 50), 2),
            "update_p50_ms": round(pct(t.update_ms, 50), 2),
            "added_p50_ms": round(pct(t.all_ms, 50) - pct(floor.all_ms, 50), 2),
            "added_p99_ms": round(pct(t.all_ms, 99) - pct(floor.all_ms, 99), 2),
        }
    vap_added = rows["vap"]["added_p50_ms"]
    ds_added = rows["dsguard"]["added_p50_ms"]
    extra: dict[str, Any] = {}
    if IN_CLUSTER in rows:
        extra["dsguard_svc_added_over_host_p50_ms"] = round(rows[IN_CLUSTER]["added_p50_ms"] - ds_added, 2)
    return {
        "config": {"n": args.n, "warmup": args.warmup, "requests_per_setup": 2 * args.n},
        "setups": rows,
        "ratio_dsguard_over_vap_added_p50": round(ds_added / vap_added, 2) if vap_added > 0 else None,
        "dsguard_added_over_minimal_p50_ms": round(ds_added - rows["minimal"]["added_p50_ms"], 2),
        "apiserver_webhook_mean_ms": apiserver_ms,
        "dsguard_handler_mean_ms": handler_ms,
        "meets_target": ds_added <= TARGET_ADDED_P50_MS
        and ds_added <= vap_added
        and rows["dsguard"]["p99_ms"] <= TARGET_P99_MS,
        **extra,
    }


def print_report(r: Mapping[str, Any]) -> None:
    cfg = r["config"]
    print(
        f"DaemonSet create + update through the apiserver: {cfg['n']} of each per set-up "
        f"({cfg['warmup']} warm-up rounds), interleaved; one keep-alive client; client-side round trip"
    )
    header = (
        f"{'set-up':<11} {'p50 ms':>7} {'p99 ms':>7} {'create p50':>10} {'update p50':>10} "
        f"{'+p50 ms':>8} {'+p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for setup, row in r["setups"].items():
        print(
            f"{setup:<11} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['create_p50_ms']:>10.2f} "
            f"{row['update_p50_ms']:>10.2f} {row['added_p50_ms']:>8.2f} {row['added_p99_ms']:>8.2f}"
        )
    ratio = r["ratio_dsguard_over_vap_added_p50"]
    print(f"\ndsguard added p50 / VAP+MAP added p50: {ratio if ratio is not None else 'n/a'}")
    print(
        "dsguard added p50 over the minimal aiohttp webhook's (the rules and dsguard's own HTTP "
        f"handling): {r['dsguard_added_over_minimal_p50_ms']:.2f} ms"
    )
    if "dsguard_svc_added_over_host_p50_ms" in r:
        print(
            "dsguard through its Service on the real node (2 pods), added p50 over the host-run dsguard's: "
            f"{r['dsguard_svc_added_over_host_p50_ms']:.2f} ms"
        )
    print("apiserver's webhook call (apiserver_admission_webhook_admission_duration_seconds, mean ms):")
    for name, kinds in sorted(r["apiserver_webhook_mean_ms"].items()):
        print(f"  {name:<22} " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items())))
    print("dsguard's own handler (dsguard_webhook_review_duration_seconds, body read to response, mean ms):")
    for setup, endpoints in sorted(r["dsguard_handler_mean_ms"].items()):
        print(f"  {setup:<22} " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(endpoints.items())))
    verdict = "meets" if r["meets_target"] else "MISSES"
    print(
        f"\ndsguard {verdict} the target: added p50 <= {TARGET_ADDED_P50_MS} ms and <= VAP+MAP's, "
        f"p99 <= {TARGET_P99_MS} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="creates (and as many updates) per set-up (300)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured rounds first (20)")
    p.add_argument("--quick", action="store_true", help="--n 60 --warmup 10")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--in-cluster", action="store_true",
        help=f"add {IN_CLUSTER}: the chart installed on a real node, called through its Service (root)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.warmup = 60, 10
    if args.n < 1 or args.warmup < 0:
        p.error("--n >= 1, --warmup >= 0")
    try:
        report = run(args)
    except (ClusterError, BinariesError, ImageError, HelmError) as exc:
        print(f"admission_latency: {exc}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
