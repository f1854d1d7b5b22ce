"""The local cluster harness itself: real controllers, kwok nodes and the failure stages.

Pod behaviour is observed through a kubectl watch (every status transition the apiserver
stored, with the time it arrived), so short states such as a one-second Ready window of a
crash-looping container cannot be missed between polls.
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import ClusterError, LocalCluster
from localcluster.nodes import (
    NODE_BEHAVIOR_ANNOTATION,
    POD_BEHAVIOR_ANNOTATION,
    NodeBehavior,
    PodBehavior,
    delete_nodes,
    set_node_behavior,
    wait_nodes_ready,
)
from localcluster.procs import listening_pids
from tests.support import builders
from tests.support.kubectl import Watch, apply
from tests.support.kwok import KwokNodes, in_group
from tests.support.polling import poll

REPO = Path(__file__).resolve().parents[2]

Pod = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------


#: DaemonSets of the tests here (on the test's nodes: node_selector=in_group(namespace)).
daemonset = partial(builders.daemonset, template_annotations={})


def ready(pod: Pod) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or []
    )


def container(pod: Pod) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def waiting_reason(pod: Pod) -> str | None:
    reason = (container(pod).get("state") or {}).get("waiting", {}).get("reason")
    return None if reason is None else str(reason)


@dataclass
class Snapshot:
    t: float
    pod: Pod


@dataclass
class PodWatch:
    """`kubectl get pods --watch`: every version of every matching pod, timestamped."""

    cluster: LocalCluster
    namespace: str
    selector: str
    history: dict[str, list[Snapshot]] = field(default_factory=dict)
    _watch: Watch | None = None

    def __enter__(self) -> PodWatch:
        self._watch = Watch(self.cluster, "pods", "-n", self.namespace, "-l", self.selector)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._watch.close()

    def latest(self) -> dict[str, Pod]:
        return {name: snaps[-1].pod for name, snaps in self.history.items()}

    def until(self, what: str, predicate: Callable[[PodWatch], bool], timeout: float) -> None:
        """Consume watch events until predicate(self) holds; fail at the deadline."""
        assert self._watch is not None, "not entered"
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                summary = {n: _summary(p) for n, p in self.latest().items()}
                pytest.fail(f"timed out after {timeout}s waiting for {what}; pods now: {summary}")
            try:
                pod = self._watch.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if pod is None:
                pytest.fail(f"kubectl watch ended: {self._watch.stderr()}")
            self.history.setdefault(pod["metadata"]["name"], []).append(Snapshot(time.monotonic(), pod))

    def observe(self, seconds: float) -> None:
        """Record every event for a fixed time window (for "this never happens" checks)."""
        end = time.monotonic() + seconds
        self.until(f"{seconds}s to pass", lambda _: time.monotonic() >= end, seconds + 5)


def _summary(pod: Pod) -> str:
    c = container(pod)
    return (
        f"phase={pod.get('status', {}).get('phase')} ready={ready(pod)} "
        f"waiting={waiting_reason(pod)} restarts={c.get('restartCount')}"
    )


@pytest.fixture
def watch(cluster: LocalCluster, namespace: str) -> Iterator[Callable[[str], PodWatch]]:
    opened: list[PodWatch] = []

    def start(selector: str) -> PodWatch:
        w = PodWatch(cluster, namespace, selector).__enter__()
        opened.append(w)
        return w

    yield start
    for w in opened:
        w.__exit__(None, None, None)


# --- nodes -----------------------------------------------------------------------------


def test_kwok_nodes_become_ready_with_the_chosen_labels_taints_and_kubelet_versions(
    cluster: LocalCluster, kwok_nodes: KwokNodes
) -> None:
    a = kwok_nodes(1, suffix="new", kubelet_version="v1.37.2", labels={"tier": "new"})
    b = kwok_nodes(1, suffix="old", kubelet_version="v1.35.4", labels={"tier": "old"})
    c = kwok_nodes(
        1,
        suffix="gpu",
        kubelet_version="v1.36.0",
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    )
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    expected = {a[0]: "v1.37.2", b[0]: "v1.35.4", c[0]: "v1.36.0"}
    for name, version in expected.items():
        node = nodes[name]
        assert node["status"]["nodeInfo"]["kubeletVersion"] == version
        conditions = {x["type"]: x for x in node["status"]["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert conditions["Ready"]["reason"] == "KubeletReady"
        assert node["status"]["allocatable"]["pods"] == "1M"
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
    assert nodes[a[0]]["metadata"]["labels"]["tier"] == "new"
    assert nodes[b[0]]["metadata"]["labels"]["tier"] == "old"
    assert nodes[c[0]]["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]

    # kwok heartbeats through node Leases, as kubelets do.
    def leases() -> bool:
        got = cluster.kubectl_json("get", "leases", "-n", "kube-node-lease")["items"]
        return set(expected) <= {lease["metadata"]["name"] for lease in got}

    poll(leases, what="a kube-node-lease Lease for each node", timeout=20, interval=0.3)


def test_nodes_without_the_kwok_annotation_are_left_alone(cluster: LocalCluster, namespace: str) -> None:
    name = f"{namespace}-unmanaged"
    node = builders.node(name, labels=in_group(namespace))
    cluster.kubectl("create", "-f", "-", input=json.dumps(node))
    try:
        # A kwok-managed node is Ready within about a second; give kwok several.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            got = cluster.kubectl_json("get", "node", name)
            reasons = [c.get("reason") for c in got["status"].get("conditions") or []]
            assert "KubeletReady" not in reasons
            time.sleep(0.5)
    finally:
        cluster.kubectl("delete", "node", name, "--wait=false")


# --- DaemonSets ------------------------------------------------------------------------


def test_daemonset_runs_one_ready_pod_per_untainted_node_created_by_the_controller_and_scheduled(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes
) -> None:
    plain = kwok_nodes(3, suffix="plain")
    tainted = kwok_nodes(
        1, suffix="tainted", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
    )
    apply(cluster, daemonset("agent", namespace, node_selector=in_group(namespace)))

    def settled() -> dict[str, Any] | None:
        ds = cluster.kubectl_json("get", "daemonset", "agent", "-n", namespace)
        st = ds.get("status", {})
        if (
            st.get("desiredNumberScheduled") == 3
            and st.get("numberReady") == 3
            and st.get("numberAvailable") == 3
        ):
            return dict(ds)
        return None

    ds = poll(settled, what="DaemonSet agent: 3 ready pods", timeout=60, interval=0.3)
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=agent")["items"]
    assert len(pods) == 3
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(plain)
    assert not set(tainted) & {p["spec"]["nodeName"] for p in pods}
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert ready(pod)
        assert container(pod)["state"]["running"]["startedAt"]
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "DaemonSet",
            "agent",
            ds["metadata"]["uid"],
            True,
        )
        # The DaemonSet controller pins the node through affinity; the scheduler binds it.
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        fields = terms["nodeSelectorTerms"][0]["matchFields"][0]
        assert fields["key"] == "metadata.name"
        assert fields["values"] == [pod["spec"]["nodeName"]]
        assert pod["spec"]["schedulerName"] == "default-scheduler"
    events = cluster.kubectl_json("get", "events", "-n", namespace)["items"]
    scheduled = {
        e["involvedObject"]["name"]
        for e in events
        if e["reason"] == "Scheduled"
        and (e.get("reportingComponent") or e["source"].get("component")) == "default-scheduler"
    }
    assert {p["metadata"]["name"] for p in pods} <= scheduled
    created = [
        e for e in events if e["reason"] == "SuccessfulCreate" and e["involvedObject"]["kind"] == "DaemonSet"
    ]
    assert created, "no SuccessfulCreate event from the DaemonSet controller"


def test_delete_nodes_takes_their_pods_with_them(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes
) -> None:
    """Without a kubelet a pod on a deleted node would wait for the pod GC (and keep its
    namespace terminating); delete_nodes force-deletes them, in one call per namespace."""
    names = kwok_nodes(3)
    apply(cluster, daemonset("agent", namespace, node_selector=in_group(namespace)))
    poll(
        lambda: len(pods_on(cluster, namespace, names)) == 3, what="3 pods of agent", timeout=60, interval=0.3
    )
    delete_nodes(cluster.kubectl, names[:2])
    poll(
        lambda: not pods_on(cluster, namespace, names[:2]),
        what="no pod left on the deleted nodes",
        timeout=15,
        interval=0.3,
    )
    assert [p["spec"]["nodeName"] for p in pods_on(cluster, namespace, names)] == names[2:]


def pods_on(cluster: LocalCluster, namespace: str, nodes: list[str]) -> list[Pod]:
    items: list[Pod] = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    return [p for p in items if p["spec"].get("nodeName") in nodes]


def test_daemonset_rolling_update_replaces_every_pod(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes
) -> None:
    kwok_nodes(2)
    apply(cluster, daemonset("agent", namespace, node_selector=in_group(namespace)))
    cluster.kubectl("rollout", "status", "daemonset/agent", "-n", namespace, "--timeout=60s")
    old = {p["metadata"]["uid"] for p in cluster.kubectl_json("get", "pods", "-n", namespace)["items"]}
    cluster.kubectl(
        "set", "image", "daemonset/agent", "-n", namespace, "agent=registry.example.com/agent:2.0"
    )
    cluster.kubectl("rollout", "status", "daemonset/agent", "-n", namespace, "--timeout=60s")

    def replaced() -> bool:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
        return (
            len(pods) == 2
            and not {p["metadata"]["uid"] for p in pods} & old
            and all(ready(p) and p["spec"]["containers"][0]["image"].endswith(":2.0") for p in pods)
        )

    poll(replaced, what="2 new Ready pods with image :2.0 and no old pod", timeout=30, interval=0.3)


# --- pod failure behaviours ----------------------------------------------------------------


def test_crashloop_flaps_between_ready_and_crashloopbackoff_with_rising_restarts(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, watch: Callable[[str], PodWatch]
) -> None:
    kwok_nodes(1)
    w = watch("app=crashy")
    apply(
        cluster,
        daemonset(
            "crashy",
            namespace,
            node_selector=in_group(namespace),
            template_annotations={
                POD_BEHAVIOR_ANNOTATION: PodBehavior.CRASHLOOP,
                "dsguard.test/backoff": "2s",
            },
        ),
    )

    def restarted_three_times(w: PodWatch) -> bool:
        return any((container(p).get("restartCount") or 0) >= 3 for p in w.latest().values())

    w.until("restartCount >= 3", restarted_three_times, timeout=45)
    (snaps,) = w.history.values()
    states = [(ready(s.pod), waiting_reason(s.pod), container(s.pod).get("restartCount")) for s in snaps]
    restarts = [r for _, _, r in states if r is not None]
    assert restarts == sorted(restarts), f"restartCount went down: {states}"
    assert any(r and reason is None for r, reason, _ in states), f"never Ready: {states}"
    in_backoff = [s.pod for s in snaps if waiting_reason(s.pod) == "CrashLoopBackOff"]
    assert len(in_backoff) >= 3, f"fewer than 3 CrashLoopBackOff states: {states}"
    for pod in in_backoff:
        assert pod["status"]["phase"] == "Running"
        assert not ready(pod)
        last = container(pod)["lastState"]["terminated"]
        assert (last["exitCode"], last["reason"]) == (1, "Error")
    # Ready again after each back-off: Ready -> CrashLoopBackOff -> Ready -> ... repeatedly.
    flips = sum(1 for a, b in itertools.pairwise(states) if a[0] != b[0])
    assert flips >= 4, states


def test_imagepull_stays_pending_alternating_errimagepull_and_imagepullbackoff(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, watch: Callable[[str], PodWatch]
) -> None:
    kwok_nodes(1)
    w = watch("app=pull")
    apply(
        cluster,
        daemonset(
            "pull",
            namespace,
            node_selector=in_group(namespace),
            template_annotations={
                POD_BEHAVIOR_ANNOTATION: PodBehavior.IMAGEPULL,
                "dsguard.test/backoff": "1s",
            },
        ),
    )

    def seen_both_twice(w: PodWatch) -> bool:
        reasons = [waiting_reason(s.pod) for snaps in w.history.values() for s in snaps]
        return reasons.count("ErrImagePull") >= 2 and reasons.count("ImagePullBackOff") >= 1

    w.until("ErrImagePull, ImagePullBackOff, ErrImagePull again", seen_both_twice, timeout=30)
    for snaps in w.history.values():
        for s in snaps:
            assert s.pod["status"]["phase"] == "Pending"
            assert not ready(s.pod)
            assert container(s.pod).get("restartCount", 0) == 0
    ds = cluster.kubectl_json("get", "daemonset", "pull", "-n", namespace)
    assert ds["status"].get("numberReady", 0) == 0


def test_never_ready_runs_but_stays_unready(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, watch: Callable[[str], PodWatch]
) -> None:
    kwok_nodes(2)
    w = watch("app=slow")
    apply(
        cluster,
        daemonset(
            "slow",
            namespace,
            node_selector=in_group(namespace),
            template_annotations={POD_BEHAVIOR_ANNOTATION: PodBehavior.NEVER_READY},
        ),
    )

    def both_running(w: PodWatch) -> bool:
        pods = w.latest().values()
        return len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)

    w.until("2 Running pods", both_running, timeout=30)
    w.observe(4.0)  # long after a healthy pod would have turned Ready
    for pod in w.latest().values():
        c = container(pod)
        assert c["state"]["running"]["startedAt"] and c["started"] is True
        assert c["ready"] is False and c["restartCount"] == 0
        cond = {x["type"]: x for x in pod["status"]["conditions"]}
        assert cond["Ready"]["status"] == "False" and cond["Ready"]["reason"] == "ContainersNotReady"
    assert not any(ready(s.pod) for snaps in w.history.values() for s in snaps)
    ds = cluster.kubectl_json("get", "daemonset", "slow", "-n", namespace)
    assert ds["status"].get("numberReady", 0) == 0 and ds["status"]["currentNumberScheduled"] == 2


def test_ready_then_crash_is_ready_first_then_crash_loops(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, watch: Callable[[str], PodWatch]
) -> None:
    kwok_nodes(1)
    w = watch("app=late")
    apply(
        cluster,
        daemonset(
            "late",
            namespace,
            node_selector=in_group(namespace),
            template_annotations={
                POD_BEHAVIOR_ANNOTATION: PodBehavior.READY_THEN_CRASH,
                "dsguard.test/crash-after": "4s",
                "dsguard.test/run-for": "500ms",
                "dsguard.test/backoff": "1s",
            },
        ),
    )

    def crashed_twice(w: PodWatch) -> bool:
        return any((container(p).get("restartCount") or 0) >= 2 for p in w.latest().values())

    w.until("two crashes", crashed_twice, timeout=30)
    (snaps,) = w.history.values()
    first_ready = next(s for s in snaps if ready(s.pod))
    first_crash = next(s for s in snaps if waiting_reason(s.pod) == "CrashLoopBackOff")
    assert container(first_ready.pod)["restartCount"] == 0
    assert container(first_crash.pod)["restartCount"] == 1
    # (the watch sees each change a few ms after kwok writes it, never before)
    assert first_crash.t - first_ready.t >= 3.5, "crashed before crash-after (4s) had passed"
    restarted = next(s for s in snaps if s.t > first_crash.t and ready(s.pod))
    second_crash = next(s for s in snaps if container(s.pod).get("restartCount") == 2)
    assert container(restarted.pod)["restartCount"] == 1
    # After the first crash it loops like crashloop: it runs for run-for (0.5s), not crash-after.
    assert second_crash.t - restarted.t < 3.0


# --- node failure ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "status", "taint"),
    [
        (NodeBehavior.NOT_READY, "False", "node.kubernetes.io/not-ready"),
        (NodeBehavior.UNREACHABLE, "Unknown", "node.kubernetes.io/unreachable"),
    ],
)
def test_node_behavior_annotation_makes_a_node_not_ready_and_tainted_until_removed(
    cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodes,
    behavior: NodeBehavior,
    status: str,
    taint: str,
) -> None:
    healthy, sick = kwok_nodes(2, kubelet_version="v1.36.3")
    apply(cluster, daemonset("agent", namespace, node_selector=in_group(namespace)))
    cluster.kubectl("rollout", "status", "daemonset/agent", "-n", namespace, "--timeout=60s")

    set_node_behavior(cluster.kubectl, sick, behavior)
    wait_nodes_ready(cluster.kubectl, [sick], status=status, timeout=20)

    def taints_of(name: str) -> set[tuple[str, str]]:
        node = cluster.kubectl_json("get", "node", name)
        return {(t["key"], t["effect"]) for t in node["spec"].get("taints") or []}

    # The node-lifecycle controller taints it (NoSchedule at once, NoExecute on its next pass).
    poll(
        lambda: {(taint, "NoSchedule"), (taint, "NoExecute")} <= taints_of(sick),
        what=f"{taint} NoSchedule+NoExecute on {sick}",
        timeout=30,
        interval=0.3,
    )
    assert taints_of(healthy) == set()
    node = cluster.kubectl_json("get", "node", sick)
    assert node["metadata"]["annotations"][NODE_BEHAVIOR_ANNOTATION] == behavior
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"  # kwok keeps nodeInfo
    # DaemonSet pods tolerate not-ready/unreachable NoExecute: nothing is evicted.
    pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted([healthy, sick])

    set_node_behavior(cluster.kubectl, sick, None)
    wait_nodes_ready(cluster.kubectl, [sick], status="True", timeout=20)
    poll(lambda: taints_of(sick) == set(), what=f"taints removed from {sick}", timeout=30, interval=0.3)
    assert cluster.kubectl_json("get", "node", sick)["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_up_leaves_a_running_cluster_and_down_stops_every_process_and_port(tmp_path: Path) -> None:
    workdir = tmp_path / "cli-cluster"
    py = [sys.executable, "-m", "localcluster"]
    up = subprocess.run(
        [*py, "up", "--nodes", "2", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        assert kubeconfig == workdir / "kubeconfig" and kubeconfig.exists()
        assert kubeconfig.stat().st_mode & 0o077 == 0
        state = json.loads((workdir / "state.json").read_text())
        pids = [c["pid"] for c in state["components"]]
        ports = list(state["ports"].values())
        assert {c["name"] for c in state["components"]} == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        # The processes outlived `up`.
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)
        status = subprocess.run(
            [*py, "status", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        handle = LocalCluster.from_state(workdir)
        nodes = handle.kubectl_json("get", "nodes")["items"]
        assert len(nodes) == 2
        for key in ("pki/admin.key", "pki/ca.key", "pki/sa.key", "pki/kube-scheduler.key"):
            assert (workdir / key).stat().st_mode & 0o777 == 0o600, key
    finally:
        down = subprocess.run(
            [*py, "down", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z", (
            f"pid {pid} still running"
        )
    for port in ports:
        assert not listening_pids(port) & set(pids), f"port {port} still held by a cluster process"
    assert not (workdir / "state.json").exists()


# --- faults ----------------------------------------------------------------------------------


def test_stop_and_start_component_restarts_the_apiserver_on_the_same_port_and_state(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "faults") as c:
        c.kubectl("create", "namespace", "before-outage")
        port, old_pid = c.ports.apiserver, c.component_pids()["kube-apiserver"]
        started = time.monotonic()
        c.stop_component("kube-apiserver", grace=2.0)
        assert time.monotonic() - started < 10, "SIGKILL after the grace, not the apiserver's own 60 s"
        assert c.health()["kube-apiserver"] == "not running"
        assert not listening_pids(port)
        assert c.kubectl("get", "--raw", "/readyz", check=False, timeout=20).returncode != 0
        c.start_component("kube-apiserver")
        assert c.component_pids()["kube-apiserver"] != old_pid
        assert c.ports.apiserver == port
        assert c.health()["kube-apiserver"] == "ok"
        # etcd kept the data; the same PKI and flags serve it
        assert c.kubectl_json("get", "namespace", "before-outage")["metadata"]["name"] == "before-outage"
        state = json.loads(c.state_file.read_text())
        assert {s["name"]: s["pid"] for s in state["components"]}["kube-apiserver"] == c.component_pids()[
            "kube-apiserver"
        ]
        with pytest.raises(ClusterError, match="still running"):
            c.start_component("kube-apiserver")
        with pytest.raises(ClusterError, match="no component 'kube-apiservr'"):
            c.stop_component("kube-apiservr")
