"""`make demo`: a local control plane with dsguard in it, telling its story step by step.

By default dsguard runs the way users run it: its image built from the Dockerfile (cached by
content), installed with `helm install` onto the cluster's real node (a kubelet with containerd,
beside the kwok fleet), the apiserver calling the webhook through its Service. `--host-run` (or
DSGUARD_NO_REAL_NODE=1) runs `dsguard webhook` and `dsguard guard` as host processes instead, for
machines without root.

Every step shows what kubectl printed and then checks the outcome it claims, so the demo fails
loudly (exit 1) if dsguard stops doing what it says; tests/cluster/test_demo.py runs it too.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from localcluster import host_state
from localcluster.binaries import BinariesError
from localcluster.chart import CHART, NAMESPACE, pin_values, pod_ready, webhook_pod_metrics
from localcluster.cluster import ClusterError, LocalCluster, default_workdir, start_when_node_free
from localcluster.guard_host import HostGuard
from localcluster.helm import HelmError, HelmRunner, helm_bin_dir
from localcluster.image import BuiltImage, ImageError, build_image
from localcluster.nodes import (
    POD_BEHAVIOR_ANNOTATION,
    POD_TIMING_ANNOTATIONS,
    NodeBehavior,
    PodBehavior,
    create_nodes,
    node_manifest,
    set_node_behavior,
    wait_nodes_ready,
)
from localcluster.procs import NotReady, wait_ready
from localcluster.realnode import NODE_LABEL, NODE_NAME
from localcluster.webhook_host import HostWebhook

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "manifests" / "examples"
INFRA_TAINT = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
FLUENT_BIT = "cr.fluentbit.io/fluent/fluent-bit"
# kwok plays the pods: a build that crashes on start, and a healthy one that takes 2s to start.
CRASHING = {POD_BEHAVIOR_ANNOTATION: PodBehavior.CRASHLOOP.value, POD_TIMING_ANNOTATIONS["start_delay"]: "1s",
            POD_TIMING_ANNOTATIONS["run_for"]: "500ms", POD_TIMING_ANNOTATIONS["backoff"]: "3s"}  # fmt: skip
SLOW_START = {POD_TIMING_ANNOTATIONS["start_delay"]: "2s"}
#: With a real node: the kwok fleet, i.e. every node but the real one dsguard runs on.
FLEET = {"matchExpressions": [{"key": NODE_LABEL, "operator": "DoesNotExist"}]}
GUARD_TICK = "0.2"  # seconds between the guard's re-checks of rollouts: brisk, for a demo


class AlertInbox:
    """The on-call team's alert webhook: records every JSON body POSTed to it. On loopback for a
    host-run guard; on the host's address (cluster.host_ip) for guard pods to reach it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.alerts: list[dict[str, Any]] = []
        inbox = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                inbox.alerts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, name="alert-inbox", daemon=True)

    def __enter__(self) -> AlertInbox:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in list(self.alerts) if a.get("kind") == kind]


@dataclass
class DemoEnv:
    inbox: AlertInbox
    #: Each webhook's /metrics text, by where it runs ("host", or a webhook pod's name).
    webhook_metrics: Callable[[], dict[str, str]]
    #: dsguard runs in the cluster, on its real node (not on the host).
    in_cluster: bool = False


class DemoFailed(AssertionError):
    pass


@dataclass
class Story:
    cluster: LocalCluster
    out: TextIO
    step: int = 0
    #: The cluster has a real node (dsguard's): the log collector and its coverage leave it out.
    fleet_only: bool = False

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def title(self, text: str) -> None:
        self.step += 1
        self.say(f"\n\033[1m── Step {self.step}: {text}\033[0m")

    def explain(self, text: str) -> None:
        self.say(textwrap.fill(text, width=100))

    def kubectl(self, *args: str, manifest: dict[str, Any] | None = None, show: str = "") -> Any:
        if args[:1] == ("apply",) and manifest is not None:
            args = (*args, "--server-side", "--field-manager=demo")  # its errors don't echo the whole patch
        shown = show or " ".join(args)
        self.say(f"\033[36m$ kubectl {shown}\033[0m")
        proc = self.cluster.kubectl(*args, input=yaml.safe_dump(manifest) if manifest else None, check=False)
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            self.say(f"  {line}")
        return proc

    def dsguard(self, *args: str, plugin: bool = False, show: str = "") -> subprocess.CompletedProcess[str]:
        """Run the dsguard CLI against the cluster, as `dsguard ...` or as `kubectl dsguard ...` (the
        kubectl plugin: kubectl finds kubectl-dsguard next to this Python, on PATH)."""
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "COLUMNS": "110",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        if plugin:
            cmd = [str(self.cluster.bin_dir / "kubectl"), "dsguard", *args]
        else:
            cmd = [sys.executable, "-m", "dsguard.cli", *args]
        self.say(f"\033[36m$ {'kubectl ' if plugin else ''}dsguard {show or ' '.join(args)}\033[0m")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=120)
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            self.say(f"  {line}")
        return proc

    def get(self, *args: str) -> Any:
        return json.loads(self.cluster.kubectl("get", *args, "-o", "json").stdout)

    def check(self, ok: bool, claim: str) -> None:
        if not ok:
            self.say(f"\033[31m✗ {claim}\033[0m")
            raise DemoFailed(f"step {self.step}: expected: {claim}")
        self.say(f"\033[32m✓ {claim}\033[0m")

    def poll(self, fn: Callable[[], bool], timeout: float, claim: str) -> None:
        try:
            wait_ready(fn, what=claim, timeout=timeout, interval=0.5)
        except NotReady:
            self.check(False, claim)
        self.check(True, claim)


def fluent_bit(
    image: str,
    *,
    max_unavailable: str | int = "50%",
    name: str = "fluent-bit",
    tolerations: list[dict[str, Any]] | None = None,
    fleet_only: bool = False,
) -> dict[str, Any]:
    """fleet_only: a node affinity keeps it off the real node (its image is not on that node)."""
    ds: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "logging", "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "fluent-bit", "image": image}]},
            },
        },
    }
    if tolerations is not None:
        ds["spec"]["template"]["spec"]["tolerations"] = tolerations
    if fleet_only:
        terms = [{"matchExpressions": FLEET["matchExpressions"]}]
        affinity = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
        }
        ds["spec"]["template"]["spec"]["affinity"] = affinity
    return ds


def log_collector_policy(*, fleet_only: bool = False) -> dict[str, Any]:
    """manifests/examples/log-collector.yaml; fleet_only: its coverage rule spans the kwok fleet
    (every node but the real one) instead of every node."""
    policy: dict[str, Any] = yaml.safe_load((EXAMPLES / "log-collector.yaml").read_text())
    if fleet_only:
        policy["spec"]["tolerations"]["coverage"]["nodeSelector"] = FLEET
    return policy


def template_patch(image: str, annotations: Mapping[str, str | None]) -> str:
    """A strategic merge patch of the pod template: what `kubectl set image` does, plus the
    annotations kwok reads (null removes one). It leaves the update strategy to the guard."""
    return json.dumps({"spec": {"template": {
        "metadata": {"annotations": annotations},
        "spec": {"containers": [{"name": "fluent-bit", "image": image}]},
    }}})  # fmt: skip


def nodes_spec() -> list[dict[str, Any]]:
    nodes = [node_manifest(f"general-{i}", kubelet_version="v1.37.2") for i in range(16)]
    nodes += [
        node_manifest(f"infra-{i}", labels={"pool": "infra"}, taints=[INFRA_TAINT], kubelet_version="v1.37.2")
        for i in range(4)
    ]
    nodes += [
        node_manifest(f"legacy-{i}", labels={"pool": "legacy"}, kubelet_version="v1.32.6") for i in range(4)
    ]
    return nodes


def run_story(s: Story, env: DemoEnv) -> None:
    admission_chapters(s, env)
    upgrade_chapter(s)
    audit_chapter(s)
    guard_chapters(s, env)
    waves_chapter(s, env)


def admission_chapters(s: Story, env: DemoEnv) -> None:
    cluster = s.cluster
    fleet = s.fleet_only
    if fleet:
        s.title(
            "a cluster with 24 kwok nodes: 16 general, 4 tainted infra, 4 legacy on Kubernetes v1.32; "
            "and the real node"
        )
    else:
        s.title("a cluster with 24 nodes: 16 general, 4 tainted infra, 4 legacy on Kubernetes v1.32")
    s.kubectl("get", "nodes", "-L", "pool", "--sort-by=.metadata.name")
    s.kubectl("create", "namespace", "logging")
    if fleet:
        s.explain(
            f"The real node is where dsguard runs, not part of the fleet: the demo's log collector keeps off "
            f"it with a node affinity (no {NODE_LABEL} label), and the policy's coverage rule spans the same "
            "24 (later 26) kwok nodes."
        )
        shown = f"apply -f log-collector.yaml   # coverage.nodeSelector: without {NODE_LABEL}"
        s.kubectl("apply", "-f", "-", manifest=log_collector_policy(fleet_only=True), show=shown)
    else:
        s.kubectl("apply", "-f", str(EXAMPLES / "log-collector.yaml"))
    s.poll(lambda: _policies_seen(env) >= 1, 30, "the webhook picked up DaemonSetPolicy log-collector")

    s.title("a log collector that forgets the infra taint and rolls out too fast")
    s.explain(
        "fluent-bit has no tolerations, so the DaemonSet controller would skip the 4 tainted infra nodes, "
        "and maxUnavailable 50% would take half the fleet's logging down at once. The policy adds the "
        "tolerations it requires and clamps maxUnavailable to 10%."
    )
    proc = s.kubectl(
        "apply",
        "-f",
        "-",
        manifest=fluent_bit("cr.fluentbit.io/fluent/fluent-bit:3.2.1", fleet_only=fleet),
        show="apply -f fluent-bit.yaml  # 3.2.1, maxUnavailable 50%, no tolerations",
    )
    s.check(
        proc.returncode == 0 and "dsguard added toleration" in proc.stderr, "applied, with dsguard's warnings"
    )
    stored = json.loads(cluster.kubectl("get", "ds", "fluent-bit", "-n", "logging", "-o", "json").stdout)
    spec = stored["spec"]
    jsonpath = "jsonpath={.spec.updateStrategy.rollingUpdate}{'\\n'}{.spec.template.spec.tolerations}{'\\n'}"
    s.kubectl("get", "ds", "fluent-bit", "-n", "logging", "-o", jsonpath)
    s.check(
        spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%", "maxUnavailable clamped to 10%"
    )
    s.poll(
        lambda: _pods_on(cluster, "logging", "app=fluent-bit") == 24,
        90,
        "a pod on all 24 nodes from the DaemonSet controller, tainted infra nodes included",
    )

    s.title("an upgrade to a version the legacy nodes can't run")
    s.explain("Fluent Bit 4.x needs Kubernetes >= 1.33 under this policy; 4 nodes still run kubelet v1.32.6.")
    upgrade = fluent_bit("cr.fluentbit.io/fluent/fluent-bit:4.0.1", fleet_only=fleet)
    proc = s.kubectl("apply", "-f", "-", manifest=upgrade, show="apply -f fluent-bit.yaml   # image 4.0.1")
    s.check(proc.returncode != 0 and "legacy-0" in proc.stderr and "v1.32.6" in proc.stderr,
            "denied, naming the legacy nodes and their kubelet version")  # fmt: skip
    image = cluster.kubectl("get", "ds", "fluent-bit", "-n", "logging", "-o",
                            "jsonpath={.spec.template.spec.containers[0].image}").stdout  # fmt: skip
    s.check(image.endswith(":3.2.1"), "the running DaemonSet is untouched (still 3.2.1)")

    s.title("the same check before merging, with no cluster: dsguard check")
    s.explain("CI can run the webhook's rules on manifests offline, against a saved node list.")
    workdir = cluster.workdir / "demo"
    workdir.mkdir(exist_ok=True)
    (workdir / "nodes.yaml").write_text(cluster.kubectl("get", "nodes", "-o", "yaml").stdout)
    (workdir / "fluent-bit.yaml").write_text(
        yaml.safe_dump(fluent_bit("cr.fluentbit.io/fluent/fluent-bit:4.0.1", fleet_only=fleet))
    )
    policy_file = EXAMPLES / "log-collector.yaml"
    if fleet:  # the policy as applied above
        policy_file = workdir / "log-collector.yaml"
        policy_file.write_text(yaml.safe_dump(log_collector_policy(fleet_only=True)))
    cmd = ["check", "--policy", str(policy_file), "--nodes", str(workdir / "nodes.yaml"),
           str(workdir / "fluent-bit.yaml")]  # fmt: skip
    shown = "log-collector.yaml" if fleet else "manifests/examples/log-collector.yaml"
    s.say(f"\033[36m$ dsguard check --policy {shown} --nodes nodes.yaml fluent-bit.yaml\033[0m")
    proc = subprocess.run(
        [sys.executable, "-m", "dsguard.cli", *cmd], capture_output=True, text=True, check=False
    )
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        s.say(f"  {line}")
    s.check(
        proc.returncode == 1 and "legacy-0" in proc.stdout,
        "exit status 1: the offline check gives the webhook's verdict",
    )

    s.title("server-side dry run: the same verdict, nothing stored")
    proc = s.kubectl("apply", "--dry-run=server", "-f", "-", manifest=upgrade,
                     show="apply --dry-run=server -f fluent-bit.yaml   # image 4.0.1")  # fmt: skip
    s.check(proc.returncode != 0 and "denied the request" in proc.stderr, "denied in dry run too")

    s.title("an invalid policy never reaches the webhook")
    bad = log_collector_policy(fleet_only=fleet)
    bad["metadata"]["name"] = "typo"
    bad["spec"]["rollout"]["maxUnavailable"] = "110%"
    proc = s.kubectl("apply", "-f", "-", manifest=bad, show="apply -f policy.yaml   # maxUnavailable: 110%")
    s.check(
        proc.returncode != 0 and "spec.rollout.maxUnavailable" in proc.stderr,
        "the apiserver rejects it by the CRD schema",
    )
    answered = 0.0
    if env.in_cluster:
        s.say("\nThe webhook pods' metrics (their /metrics, through the apiserver's pod proxy):")
    else:
        s.say("\nThe webhook's metrics:")
    for where, text in sorted(env.webhook_metrics().items()):
        for line in text.splitlines():
            if line.startswith("dsguard_webhook_reviews_total{"):
                answered += float(line.split()[-1])
                s.say(f"  {where}: {line}" if env.in_cluster else f"  {line}")
    if env.in_cluster:
        s.check(
            answered > 0, f"the webhook pods answered {answered:.0f} reviews, called through their Service"
        )


def _policy_status(s: Story) -> dict[str, Any]:
    return dict(s.get("daemonsetpolicy", "log-collector").get("status") or {})


def _daemonset(s: Story) -> dict[str, Any]:
    return dict(s.get("daemonset", "fluent-bit", "-n", "logging"))


def _annotation(s: Story, key: str) -> str:
    return str((_daemonset(s)["metadata"].get("annotations") or {}).get(key, ""))


def _rollout_done(s: Story, desired: int) -> bool:
    ds = _daemonset(s)
    st = ds.get("status") or {}
    return (
        st.get("observedGeneration") == ds["metadata"]["generation"]
        and st.get("desiredNumberScheduled") == desired
        and st.get("updatedNumberScheduled") == desired
        and st.get("numberAvailable") == desired
    )


def upgrade_chapter(s: Story) -> None:
    s.title("before a Kubernetes upgrade: dsguard upgrade-check")
    s.explain(
        "The policy's version rules also say Fluent Bit 3.x is not supported on Kubernetes 1.38. Before "
        "upgrading, list what would break, from the cluster as it runs:"
    )
    proc = s.dsguard("upgrade-check", "--to", "1.38.0")
    s.check(
        proc.returncode == 1 and "logging/fluent-bit" in proc.stdout and "general-0" in proc.stdout,
        "exit status 1: fluent-bit 3.2.1 breaks on 1.38, and the nodes are named",
    )
    s.explain(
        "And the other way round: would upgrading just the legacy pool to 1.33 let Fluent Bit 4.0.1 in?"
    )
    manifest = s.cluster.workdir / "demo" / "fluent-bit.yaml"  # 4.0.1, written by the dsguard check step
    proc = s.dsguard(
        "upgrade-check", "--to", "1.33.0", "--node-selector", "pool=legacy", "-f", str(manifest),
        show="upgrade-check --to 1.33.0 --node-selector pool=legacy -f fluent-bit.yaml   # image 4.0.1",
    )  # fmt: skip
    s.check(
        proc.returncode == 0, "exit status 0: after that pool upgrade, 4.0.1 is compatible with every node"
    )


def audit_chapter(s: Story) -> None:
    s.title("the audit: running DaemonSets are judged again when the cluster changes")
    s.explain(
        "Admission judges a DaemonSet when it changes. The guard's background audit judges the ones "
        "already running again whenever nodes, namespaces or policies change, and writes what it finds "
        "to the policy's status, which kubectl shows."
    )
    s.poll(lambda: _policy_status(s).get("matchedDaemonSets") == 1, 30, "audited: 1 governed DaemonSet")
    s.kubectl("get", "daemonsetpolicies")
    s.check(_policy_status(s).get("violationCount") == 0, "no violations")
    s.explain(
        "A GPU node pool joins, tainted nvidia.com/gpu=present:NoSchedule. fluent-bit doesn't tolerate "
        "that taint, so the DaemonSet controller skips those nodes and their logs go missing, silently. "
        "The policy's coverage rule says a log collector must run on every node."
    )
    gpu = [node_manifest(f"gpu-{i}", labels={"pool": "gpu"}, taints=[GPU_TAINT], kubelet_version="v1.37.2")
           for i in range(2)]  # fmt: skip
    create_nodes(s.cluster.kubectl, gpu)
    wait_nodes_ready(s.cluster.kubectl, [n["metadata"]["name"] for n in gpu], timeout=60)
    s.say("\033[36m$ kubectl create -f gpu-nodes.yaml   # gpu-0, gpu-1\033[0m")

    def gap_found() -> bool:  # in the status, as of the audit after both nodes joined
        st = _policy_status(s)
        message = " ".join(str(v.get("message", "")) for v in st.get("violations") or [])
        return st.get("violationCount") == 1 and "gpu-0" in message and "gpu-1" in message

    s.poll(gap_found, 30, "the audit found the gap: both GPU nodes, in the policy's status")
    s.kubectl("get", "daemonsetpolicy", "log-collector")
    proc = s.kubectl(
        "get", "events", "-n", "logging", "--field-selector", "reason=PolicyViolation",
        "-o", "jsonpath={range .items[*]}{.type} {.reason} {.involvedObject.name}: {.message}{'\\n'}{end}",
        show="get events -n logging --field-selector reason=PolicyViolation",
    )  # fmt: skip
    # The first Event says what the audit first saw (gpu-0 alone, if it judged between the two); the
    # change is announced after --audit-resync (5 min), past the demo's end.
    s.check(
        "(coverage)" in proc.stdout and "gpu-0" in proc.stdout, "an Event on the DaemonSet announced the gap"
    )
    s.explain("The team makes the collector tolerate every taint, as log collectors usually do:")
    fixed = fluent_bit(
        f"{FLUENT_BIT}:3.2.1",
        max_unavailable="10%",
        tolerations=[{"operator": "Exists"}],
        fleet_only=s.fleet_only,
    )
    s.kubectl(
        "apply",
        "-f",
        "-",
        manifest=fixed,
        show="apply -f fluent-bit.yaml   # tolerations: [{operator: Exists}]",
    )
    s.poll(lambda: _policy_status(s).get("violationCount") == 0, 30, "the audit: compliant again")
    s.poll(lambda: _rollout_done(s, 26), 90, "fluent-bit runs on all 26 nodes, the GPU pool included")


def guard_chapters(s: Story, env: DemoEnv) -> None:
    s.title("a broken build: the guard pauses the rollout and pages on-call")
    policy = log_collector_policy(fleet_only=s.fleet_only)
    policy["spec"]["guard"]["alerts"] = [{"type": "Webhook", "url": env.inbox.url}]
    s.kubectl("apply", "-f", "-", manifest=policy,
              show="apply -f log-collector.yaml   # guard.alerts: the on-call webhook")  # fmt: skip
    generation = s.get("daemonsetpolicy", "log-collector")["metadata"]["generation"]
    s.poll(
        lambda: _policy_status(s).get("observedGeneration") == generation, 30, "the guard has the new policy"
    )
    s.explain(
        "fluent-bit 3.2.2 crashes on start (kwok plays the pods; the policy's guard section allows 3 "
        "failing pods). The DaemonSet controller starts replacing pods, 10% of the nodes at a time."
    )
    broken = template_patch(f"{FLUENT_BIT}:3.2.2", CRASHING)
    s.kubectl(
        "patch", "daemonset", "fluent-bit", "-n", "logging", "-p", broken,
        show="set image daemonset/fluent-bit fluent-bit=...:3.2.2 -n logging   # crashes on start",
    )  # fmt: skip
    s.poll(lambda: _annotation(s, "dsguard.io/paused") == "true", 60, "the guard paused the rollout")
    ds = _daemonset(s)
    updated, desired = ds["status"].get("updatedNumberScheduled", 0), ds["status"]["desiredNumberScheduled"]
    s.kubectl("get", "daemonset", "fluent-bit", "-n", "logging", "-o", "wide")
    s.check(
        updated < desired, f"the rollout stopped at {updated} of {desired} nodes (updateStrategy: OnDelete)"
    )
    s.say(f"  pause-reason: {_annotation(s, 'dsguard.io/pause-reason')}")
    s.poll(lambda: bool(env.inbox.of_kind("paused")), 30, "on-call got the alert:")
    alert = env.inbox.of_kind("paused")[0]
    shown = {**alert, "failing": alert.get("failing", [])[:3]}
    for line in json.dumps(shown, indent=2).splitlines():
        s.say(f"  {line}")
    s.check(
        alert["daemonset"]["name"] == "fluent-bit" and bool(alert["failing"]),
        "the alert names the pods and nodes",
    )
    s.kubectl("get", "events", "-n", "logging", "--field-selector", "reason=RolloutPaused")
    proc = s.dsguard("status", "-n", "logging", plugin=True)
    s.check(proc.returncode == 0 and "paused" in proc.stdout.lower() and "CrashLoopBackOff" in proc.stdout,
            "kubectl dsguard status: paused, and why")  # fmt: skip

    s.title("the fixed build, and a rack that loses power mid-rollout")
    s.explain(
        "3.2.3 fixes the crash. A new revision of a paused DaemonSet resumes it: the guard puts back the "
        "update strategy it replaced and watches the new rollout from scratch."
    )
    fix = {**dict.fromkeys(CRASHING), **SLOW_START}
    s.kubectl(
        "patch", "daemonset", "fluent-bit", "-n", "logging", "-p", template_patch(f"{FLUENT_BIT}:3.2.3", fix),
        show="set image daemonset/fluent-bit fluent-bit=...:3.2.3 -n logging",
    )  # fmt: skip
    s.poll(lambda: _annotation(s, "dsguard.io/paused") == "", 30, "resumed by the new revision")
    nodes: list[str] = []

    def three_updated() -> bool:
        pods = s.get("pods", "-n", "logging", "-l", "app=fluent-bit")["items"]
        ready = [p["spec"]["nodeName"] for p in pods if p["spec"]["containers"][0]["image"].endswith(":3.2.3")
                 and any(c["type"] == "Ready" and c["status"] == "True"
                         for c in p["status"].get("conditions", []))]  # fmt: skip
        nodes[:] = sorted(ready)[:3]
        return len(nodes) == 3

    s.poll(three_updated, 60, "3.2.3 is Ready on the first nodes")
    s.say(f"\033[36m$ # rack 7 loses power: {', '.join(nodes)} (already on 3.2.3) go NotReady\033[0m")
    for n in nodes:
        set_node_behavior(s.cluster.kubectl, n, NodeBehavior.NOT_READY)
    s.poll(lambda: _annotation(s, "dsguard.io/paused") == "true", 60, "the guard paused this rollout too")
    s.say(f"  pause-reason: {_annotation(s, 'dsguard.io/pause-reason')}")
    proc = s.dsguard("status", "-n", "logging", plugin=True)
    s.check("NotReady" in proc.stdout, "dsguard status: the failures are the nodes, not the build")
    s.explain("Power comes back; the nodes are Ready again. The on-call engineer resumes the rollout:")
    for n in nodes:
        set_node_behavior(s.cluster.kubectl, n, None)
    wait_nodes_ready(s.cluster.kubectl, nodes, timeout=60)
    resumed_before = len(env.inbox.of_kind("resumed"))
    proc = s.dsguard("resume", "logging/fluent-bit", plugin=True)
    s.check(proc.returncode == 0, "resumed: the update strategy is back")
    s.poll(lambda: _rollout_done(s, 26), 120, "3.2.3 rolled out to all 26 nodes")
    s.poll(lambda: len(env.inbox.of_kind("resumed")) > resumed_before, 30, "on-call got the all-clear")
    proc = s.dsguard("status", "-n", "logging", plugin=True)
    done = re.search(r"fluent-bit\s+log-collector\s+26\s+26\s+26\s+0\s+-", proc.stdout)
    s.check(proc.returncode == 0 and bool(done) and "PAUSED by" not in proc.stdout,
            "dsguard status: 26 of 26 updated and ready, none failing, nothing paused")  # fmt: skip


def _policies_seen(env: DemoEnv) -> float:
    """The policies every webhook (each pod behind the Service) has loaded: the fewest of them."""
    counts = []
    for text in env.webhook_metrics().values():
        found = [float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("dsguard_policies ")]
        counts.append(found[0] if found else 0.0)
    return min(counts, default=0.0)


def _pods_on(cluster: LocalCluster, namespace: str, selector: str) -> int:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)[
        "items"
    ]
    return len({p["spec"].get("nodeName") for p in pods if p["status"].get("phase") == "Running"})


def waves_chapter(s: Story, env: DemoEnv) -> None:
    s.title("pacing: a canary and waves, so a late crash reaches two nodes, not half the fleet")
    s.explain(
        "3.2.4 is Ready for 3s, then crashes. The DaemonSet controller counts it available and moves "
        "on before the first crash. With guard.waves the guard rolls it out itself: 2 canary nodes, "
        "then one wave per node pool, each baked 15s under the failure signals."
    )
    policy = log_collector_policy(fleet_only=s.fleet_only)
    policy["spec"]["guard"].update(
        failureThreshold=1,
        alerts=[{"type": "Webhook", "url": env.inbox.url}],
        waves={"canary": {"nodes": 2}, "groupBy": "pool", "maxUnavailable": 2, "bakeSeconds": 15},
    )
    s.kubectl("apply", "-f", "-", manifest=policy,
              show="apply -f log-collector.yaml   # guard.waves: canary 2, then pool by pool")  # fmt: skip
    generation = s.get("daemonsetpolicy", "log-collector")["metadata"]["generation"]
    s.poll(
        lambda: _policy_status(s).get("observedGeneration") == generation, 30, "the guard has the new policy"
    )
    proc = s.dsguard("plan", "logging/fluent-bit", plugin=True)
    s.check(
        proc.returncode == 0 and "1. canary: 2 node(s)" in proc.stdout,
        "the plan: a canary of 2, then the pools",
    )
    flaps = {
        **dict.fromkeys(SLOW_START),
        POD_BEHAVIOR_ANNOTATION: PodBehavior.READY_THEN_CRASH.value,
        POD_TIMING_ANNOTATIONS["start_delay"]: "1s",
        POD_TIMING_ANNOTATIONS["crash_after"]: "3s",
        POD_TIMING_ANNOTATIONS["backoff"]: "3s",
    }
    late_crash = template_patch(f"{FLUENT_BIT}:3.2.4", flaps)
    s.kubectl(
        "patch", "daemonset", "fluent-bit", "-n", "logging", "-p", late_crash,
        show="set image daemonset/fluent-bit fluent-bit=...:3.2.4 -n logging   # Ready 3s, then crashes",
    )  # fmt: skip
    s.check(_daemonset(s)["spec"]["updateStrategy"] == {"type": "OnDelete"},
            "the webhook handed the rollout to the guard (OnDelete, your strategy kept)")  # fmt: skip
    s.poll(lambda: _annotation(s, "dsguard.io/paused") == "true", 60, "the guard paused the rollout")
    pods = s.get("pods", "-n", "logging", "-l", "app=fluent-bit")["items"]
    on_new = len(
        {p["spec"].get("nodeName") for p in pods if p["spec"]["containers"][0]["image"].endswith(":3.2.4")}
    )
    s.check(on_new <= 2, f"3.2.4 reached {on_new} of 26 nodes: the canary, nothing else")
    proc = s.dsguard("status", "-n", "logging", plugin=True)
    s.check(
        "wave 1/" in proc.stdout and "PAUSED by" in proc.stdout, "dsguard status: paused in wave 1 (canary)"
    )
    proc = s.dsguard("rollback", "logging/fluent-bit", plugin=True)
    s.check(proc.returncode == 0, "rolled back: 3.2.3 and your update strategy are back")
    s.poll(lambda: _rollout_done(s, 26), 120, "every node runs 3.2.3 again")


def install_chapter(s: Story, image: BuiltImage, helm: HelmRunner) -> None:
    """`helm install` of the chart onto the real node, as a user types it; every pod Ready."""
    s.title("dsguard installed with Helm, on the real node")
    s.explain(
        f"Its image {image.ref} is built from the project's Dockerfile (cached by its sources) and "
        "imported by the real node's containerd. Helm installs the chart with only the image and a "
        "nodeSelector pinning each Deployment to the real node set, plus the guard's --tick for a brisk "
        "demo. The webhooks judge DaemonSets in every namespace but dsguard's own (and those labelled "
        "dsguard.io/exclude=true)."
    )
    values = [*pin_values(image), "--set-json", f'guard.extraArgs=["--tick={GUARD_TICK}"]']
    shown = " \\\n      ".join(
        ["helm install dsguard manifests/helm/dsguard -n dsguard --create-namespace --wait"]
        + [f"{values[i]} '{values[i + 1]}'" for i in range(0, len(values), 2)]
    )
    s.say(f"\033[36m$ {shown}\033[0m")
    t = time.monotonic()
    proc = helm.run("install", "dsguard", str(CHART), "-n", NAMESPACE, "--create-namespace", "--wait",
                    "--timeout", "5m", *values, timeout=330, check=False)  # fmt: skip
    seconds = time.monotonic() - t
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        s.say(f"  {line}")
    s.check(
        proc.returncode == 0 and "STATUS: deployed" in proc.stdout, f"installed, all Ready in {seconds:.0f}s"
    )
    s.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide")
    pods = [p for p in s.get("pods", "-n", NAMESPACE)["items"] if not p["metadata"].get("deletionTimestamp")]
    s.check(
        len(pods) == 5
        and all(pod_ready(p) and p["spec"].get("nodeName") == NODE_NAME for p in pods)
        and all(p["spec"]["containers"][0]["image"] == image.ref for p in pods),
        f"5 pods Ready on {NODE_NAME}, from {image.ref}: 2 webhooks, 2 guards (one leads), the certificates",
    )
    hooks = [s.get(kind, f"dsguard-{verb}")["webhooks"][0]["clientConfig"]
             for kind, verb in (("mutatingwebhookconfiguration", "mutate"),
                                ("validatingwebhookconfiguration", "validate"))]  # fmt: skip
    s.check(
        all(h.get("caBundle") and (h.get("service") or {}).get("name") == "dsguard-webhook" for h in hooks),
        "the apiserver calls the webhooks through the Service dsguard-webhook.dsguard.svc, trusting the "
        "CA the certs pod wrote",
    )


@contextmanager
def demo_environment(
    cluster: LocalCluster, s: Story, image: BuiltImage | None = None, helm: HelmRunner | None = None
) -> Iterator[DemoEnv]:
    """The kwok fleet, the alert inbox and dsguard: installed with Helm on the real node when
    image and helm are given, else run on the host."""
    nodes = nodes_spec()
    create_nodes(cluster.kubectl, nodes)
    wait_nodes_ready(cluster.kubectl, [n["metadata"]["name"] for n in nodes], timeout=90)
    if image is not None and helm is not None:
        # The guard pods reach the inbox on the host's address (pods can't reach its loopback).
        with AlertInbox(cluster.host_ip) as inbox:
            install_chapter(s, image, helm)
            yield DemoEnv(inbox, lambda: webhook_pod_metrics(cluster), in_cluster=True)
        return
    # Only the demo's namespace: the webhook never judges the cluster's own system namespaces.
    # The guard watches the cluster's DaemonSetPolicies (so it audits them too); --tick for a
    # brisk demo. The guard's own changes (pause, resume) pass the webhook as any user's would.
    with (
        AlertInbox() as inbox,
        HostWebhook(
            cluster, namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": "logging"}}
        ) as hook,
        HostGuard(cluster, tick=float(GUARD_TICK)),
    ):
        yield DemoEnv(inbox, lambda: {"host": hook.metrics()})


def start_cluster(workdir: Path, *, real_node: bool, die_with_parent: bool, wait_node: float) -> LocalCluster:
    """The demo's cluster, started; with a real node, retried for up to wait_node seconds while
    another one (e.g. a test run's) holds the machine: only one runs per machine."""

    def make(attempt: int) -> LocalCluster:
        return LocalCluster(workdir, real_node=real_node, die_with_parent=die_with_parent,
                            startup_timeout=240 if real_node else 120)  # fmt: skip

    def busy() -> None:
        print(f"  another real node holds this machine; retrying until it is gone (up to {wait_node:.0f}s)")

    return start_when_node_free(make, wait=wait_node, on_busy=busy)


def _host_run_reason(args: argparse.Namespace) -> str:
    """Why dsguard runs on the host ("" when it is installed on the real node)."""
    if args.host_run:
        return "--host-run"
    if os.environ.get(host_state.NO_REAL_NODE_ENV) == "1":
        return f"{host_state.NO_REAL_NODE_ENV}=1 (a machine without a real node)"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument(
        "--workdir", type=Path, default=default_workdir(),
        help="cluster work dir (default: $DSGUARD_CLUSTER_DIR or .cluster, where `make cluster-down` looks)",
    )  # fmt: skip
    parser.add_argument("--down", action="store_true", help="stop the cluster at the end")
    parser.add_argument(
        "--host-run", action="store_true",
        help="run `dsguard webhook` and `dsguard guard` as host processes (no root, no real node) instead "
        "of installing dsguard with Helm on the cluster's real node (also: DSGUARD_NO_REAL_NODE=1)",
    )  # fmt: skip
    parser.add_argument(
        "--wait-node", type=float, default=0.0, metavar="SECONDS",
        help="while another real node holds this machine (one per machine), retry for up to SECONDS",
    )  # fmt: skip
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    host_run = _host_run_reason(args)
    if host_run:
        print(f"{host_run}: dsguard runs on the host, not installed in the cluster on a real node.")
    else:
        missing = host_state.missing_requirements()
        if missing:
            print(
                "demo failed: this machine cannot run the real node dsguard is installed on; it lacks: "
                + "; ".join(missing)
                + ". Without one, run dsguard on the host instead: python -m localcluster.demo --host-run"
                f" (make demo: {host_state.NO_REAL_NODE_ENV}=1 make demo).",
                file=sys.stderr,
            )
            return 2
    start = time.monotonic()
    phases: dict[str, float] = {}
    try:  # a cluster left up by an earlier demo: start afresh
        LocalCluster.from_state(workdir).stop()
        print(f"Stopped the cluster an earlier run left in {workdir}.")
    except ClusterError:
        pass
    image: BuiltImage | None = None
    helm: HelmRunner | None = None
    if not host_run:
        print("Building dsguard's image from the Dockerfile (cached by its sources) and finding Helm...")
        t = time.monotonic()
        try:
            image = build_image(say=lambda m: print(f"  image: {m}", flush=True))
            helm = HelmRunner(workdir / "helm", workdir / "kubeconfig", helm_bin_dir())
        except (ImageError, HelmError) as exc:
            print(f"\n\033[31mdemo failed: {exc}\033[0m", file=sys.stderr)
            return 1
        phases["image and helm"] = time.monotonic() - t
        built = "cached" if image.cached else "built"
        print(f"  {image.ref} ({built}) and helm in {phases['image and helm']:.1f}s")
    what = "kube-apiserver, etcd, controller-manager, scheduler, kwok"
    print(f"Starting a local control plane ({what}{'' if host_run else ', a real node'})...")
    t = time.monotonic()
    try:
        cluster = start_cluster(
            workdir, real_node=not host_run, die_with_parent=args.down, wait_node=args.wait_node
        )
    except (ClusterError, BinariesError) as exc:
        hint = "" if host_run else " (--host-run runs the demo without a real node)"
        print(f"\n\033[31mdemo failed: the cluster did not start{hint}: {exc}\033[0m", file=sys.stderr)
        return 1
    phases["cluster"] = time.monotonic() - t
    node = cluster.real_node
    if node is not None:
        print(f"  real node {node.name} Ready; images in its containerd: {', '.join(node.image_refs())}")
    print(f"  up in {phases['cluster']:.1f}s; logs in {cluster.logs_dir}")
    ok = False
    try:
        s = Story(cluster, sys.stdout, fleet_only=not host_run)  # stdout looked up now: a test may replace it
        t = time.monotonic()
        with demo_environment(cluster, s, image, helm) as env:
            phases["fleet and dsguard"] = time.monotonic() - t
            t = time.monotonic()
            run_story(s, env)
            phases["story"] = time.monotonic() - t
        ok = True
    except DemoFailed as e:
        print(f"\n\033[31mdemo failed: {e}\033[0m\nlogs: {cluster.logs_dir}", file=sys.stderr)
    finally:
        if args.down or not ok:
            cluster.stop()
    if not ok:
        return 1
    took = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in phases.items())
    print(f"\nDemo finished in {time.monotonic() - start:.0f}s ({took}).")
    if not args.down:
        print(_way_in(cluster, workdir, in_cluster=not host_run, helm=helm))
    return 0


def _way_in(cluster: LocalCluster, workdir: Path, *, in_cluster: bool, helm: HelmRunner | None) -> str:
    venv_bin = Path(sys.executable).parent
    down = (
        "make cluster-down"
        if workdir == default_workdir().resolve()
        else f"{sys.executable} -m localcluster down --workdir {workdir}"
    )
    path = f"{cluster.bin_dir}:{venv_bin}" + (f":{helm.binary.parent}" if helm is not None else "")
    if in_cluster:
        return textwrap.dedent(f"""
            The cluster is still up, dsguard running in it on the real node. Look around:
              export KUBECONFIG={cluster.kubeconfig} PATH={path}:$PATH
              kubectl -n dsguard get pods
              kubectl get daemonsetpolicies
              kubectl dsguard status -A
              helm -n dsguard status dsguard
            Stop it (the real node too) with: {down}""")
    return textwrap.dedent(f"""
        The cluster is still up (dsguard's webhook and guard stopped with the demo). Look around:
          export KUBECONFIG={cluster.kubeconfig} PATH={path}:$PATH
          kubectl get daemonsetpolicies
          kubectl dsguard status -A
          dsguard guard                  # run the guard again (Ctrl-C stops it)
        Stop it with: {down}""")


if __name__ == "__main__":
    sys.exit(main())
