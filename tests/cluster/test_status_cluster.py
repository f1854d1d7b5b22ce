"""`dsguard status` against the real control plane: the real DaemonSet controller rolls a DaemonSet
out over this test's kwok nodes (nodeSelector dsguard.test/group=<namespace>), kwok plays the
pods (the pod annotation dsguard.test/behavior: crashloop makes them crash-loop), the policies
are real cluster-scoped DaemonSetPolicies matching only the test's namespace, and the command
runs as a subprocess, as a user or a pipeline runs it.

What `status` reports is checked against what kubectl reads from the cluster, never against what
the test wrote; every wait polls with a deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from localcluster.cluster import LocalCluster
from localcluster.guard_host import HostGuard
from localcluster.nodes import POD_BEHAVIOR_ANNOTATION, POD_TIMING_ANNOTATIONS, PodBehavior
from localcluster.webhook_host import REPO
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import KwokNodes, in_group
from tests.support.polling import poll

T = TypeVar("T")
Obj = dict[str, Any]

IMAGE = "registry.example.com/agent:1.0"
FAST = {POD_TIMING_ANNOTATIONS["start_delay"]: "100ms"}  # healthy pods, Ready quickly
CRASHLOOP = {
    POD_BEHAVIOR_ANNOTATION: PodBehavior.CRASHLOOP.value,
    POD_TIMING_ANNOTATIONS["start_delay"]: "300ms",
    POD_TIMING_ANNOTATIONS["run_for"]: "500ms",
    POD_TIMING_ANNOTATIONS["backoff"]: "3s",
}
VENV_BIN = Path(sys.executable).parent  # where pip put the kubectl-dsguard console script


class World:
    """One test's DaemonSet `agent`, its DaemonSetPolicy and the `dsguard status` runs."""

    def __init__(self, cluster: LocalCluster, namespace: str, nodes: KwokNodes, tmp_path: Path) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.nodes = nodes
        self.tmp_path = tmp_path
        self.policy_name = f"status-{namespace}"
        self.guards: list[HostGuard] = []

    # -- the cluster ----------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, obj: Obj) -> None:
        apply(self.cluster, obj)

    def policy(self, spec: Mapping[str, Any] | None = None) -> Obj:
        """A DaemonSetPolicy matching only this test's namespace (policies are cluster-scoped)."""
        return builders.policy(self.policy_name, spec, namespaces=[self.ns])

    def policy_file(self, obj: Obj) -> Path:
        path = self.tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(obj))
        return path

    def daemonset(self, annotations: Mapping[str, str] = FAST, image: str = IMAGE) -> Obj:
        return builders.daemonset(
            "agent", self.ns, image=image, node_selector=in_group(self.ns), max_unavailable=2,
            template_annotations=annotations,
        )  # fmt: skip

    def ds(self) -> Obj:
        return dict(self.cluster.kubectl_json("get", "daemonset", "agent", "-n", self.ns))

    def rolled_out(self, count: int) -> Obj:
        """Until the controller has seen the latest spec and `count` pods are updated and available."""

        def done() -> Obj | None:
            ds = self.ds()
            st = ds.get("status", {})
            ok = st.get("observedGeneration") == ds["metadata"]["generation"] and (
                st.get("desiredNumberScheduled") == st.get("updatedNumberScheduled")
                == st.get("numberAvailable") == count
            )  # fmt: skip
            return ds if ok else None

        return poll(done, what=f"agent rolled out on {count} nodes")

    # -- dsguard status -------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "dsguard.cli",
            "status",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["COLUMNS"] = "250"
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
        )

    def report(self, *args: str) -> Obj:
        proc = self.run("-n", self.ns, "-o", "json", *args)
        assert proc.returncode == 0, proc.stderr
        doc: Obj = json.loads(proc.stdout)
        return doc

    def row(self, *args: str) -> Obj | None:
        """The report's row for `agent`, None when it isn't shown."""
        rows = [d for d in self.report(*args)["daemonsets"] if d["name"] == "agent"]
        return rows[0] if rows else None

    def until_row(self, what: str, ok: Callable[[Obj], bool], *args: str, timeout: float = 30.0) -> Obj:
        def get() -> Obj | None:
            r = self.row(*args)
            return r if r is not None and ok(r) else None

        return poll(get, what=what, timeout=timeout)

    def guard(self, policy_file: Path) -> HostGuard:
        g = HostGuard(self.cluster, policy_files=[policy_file], lease_name=f"guard-{self.ns}", tick=0.2)
        self.guards.append(g)
        return g.start(wait=False)

    def cleanup(self) -> None:
        for g in self.guards:
            g.stop()
            print(f"--- guard log ({g.log_path}):\n{g.log_tail(40)}")  # shown for a failed test only
            self.kubectl(
                "delete", "lease", g.lease_name, "-n", g.lease_namespace, "--ignore-not-found", check=False
            )
        for name in (self.policy_name, f"broken-{self.ns}"):
            self.kubectl("delete", "daemonsetpolicy", name, "--ignore-not-found", check=False)
        self.kubectl("delete", "daemonset", "agent", "-n", self.ns, "--ignore-not-found", check=False)
        self.kubectl("delete", "pods", "-n", self.ns, "--all", "--grace-period=0", "--force", "--wait=false",
                     check=False)  # fmt: skip


@pytest.fixture
def world(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, crd: str, tmp_path: Path
) -> Iterator[World]:
    w = World(cluster, namespace, kwok_nodes, tmp_path)
    try:
        yield w
    finally:
        w.cleanup()


def complete(count: int) -> Callable[[Obj], bool]:
    def ok(r: Obj) -> bool:
        return bool(
            r["rollout"] == "complete"
            and r["desired"] == r["updated"] == r["ready"] == r["available"] == count
        )

    return ok


# --- the tests ------------------------------------------------------------------------------------


def test_counts_follow_nodes_and_violations_follow_nodes_and_policies(world: World) -> None:
    w = world
    w.nodes(3)
    old_agent_nodes = {  # the agent's 1.x images don't run on kubelets before 1.31
        "versions": {
            "rules": [
                {
                    "image": "registry.example.com/agent",
                    "compatibility": [{"kubernetes": "<1.31.0", "versions": ">=2.0.0"}],
                }
            ]
        }
    }
    w.apply(w.policy(old_agent_nodes))
    w.apply(w.daemonset())
    ds = w.rolled_out(3)

    row = w.until_row("status to show the rollout complete on 3 nodes", complete(3))
    assert row["governed"] and row["policies"] == [w.policy_name]
    assert row["generation"] == row["observedGeneration"] == ds["metadata"]["generation"]
    assert row["pods"] == {"total": 3, "updated": 3}
    assert row["failing"]["total"] == 0 and row["violations"] == []
    revisions = w.cluster.kubectl_json("get", "controllerrevisions", "-n", w.ns)["items"]
    assert (
        row["updateRevision"]
        == max(revisions, key=lambda r: int(r["revision"]))["metadata"]["labels"]["controller-revision-hash"]
    )

    # a policy the apiserver accepts but dsguard can't use: listed as a warning, not a crash
    broken = {**w.policy(), "metadata": {"name": f"broken-{w.ns}"}}
    broken["spec"]["versions"] = {
        "rules": [
            {
                "image": "registry.example.com/agent:1.0",
                "compatibility": [{"kubernetes": ">=1.0.0", "versions": ">=1.0.0"}],
            }
        ]
    }
    w.apply(broken)
    proc = w.run("-n", w.ns, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    errors = {e["policy"]: e["error"] for e in json.loads(proc.stdout)["policyErrors"]}
    assert "spec.versions.rules[0].image" in errors[f"broken-{w.ns}"]
    assert f"warning: DaemonSetPolicy/broken-{w.ns} is invalid and ignored" in proc.stderr
    w.kubectl("delete", "daemonsetpolicy", f"broken-{w.ns}")

    # nodes join: desired grows
    w.nodes(2)
    w.until_row("desired to grow to 5", complete(5))

    # a node on an old kubelet joins: the versions rule flags the DaemonSet
    old = w.nodes(1, suffix="old", kubelet_version="v1.30.4")
    row = w.until_row("a versions violation", lambda r: bool(r["violations"]))
    [v] = row["violations"]
    assert (v["policy"], v["rule"], v["severity"]) == (w.policy_name, "versions", "violation")
    assert old[0] in v["message"] and "v1.30.4" in v["message"]

    # the policy is edited: the violation goes
    w.apply(w.policy())
    w.until_row("the violation to disappear after the policy edit", lambda r: r["violations"] == [])

    # the policy is deleted: the DaemonSet is no longer governed
    w.kubectl("delete", "daemonsetpolicy", w.policy_name)
    poll(lambda: w.row() is None, what="agent to drop out of the governed list")
    named = w.row("agent")  # named: shown anyway, saying so
    assert named is not None and named["governed"] is False and named["policies"] == []
    proc = w.run("-n", w.ns, "agent")
    assert proc.returncode == 0, proc.stderr
    assert "not governed" in proc.stdout


def test_crash_looping_pods_are_counted_by_reason(world: World) -> None:
    w = world
    w.nodes(4)
    w.apply(w.policy())  # no guard section: the default GuardPolicy judges the pods
    w.apply(w.daemonset())
    w.rolled_out(4)

    w.apply(w.daemonset(annotations=CRASHLOOP))
    row = w.until_row(
        "CrashLoopBackOff pods on the update revision",
        lambda r: any(
            x["reason"] == "CrashLoopBackOff" and x["updated"] > 0 for x in r["failing"]["byReason"]
        ),
    )
    pods = w.cluster.kubectl_json("get", "pods", "-n", w.ns, "-l", "app=agent")["items"]
    crashing = {
        p["metadata"]["labels"]["controller-revision-hash"]
        for p in pods
        if any(cs.get("restartCount", 0) > 0 for cs in p["status"].get("containerStatuses", []))
    }
    assert crashing == {row["updateRevision"]}, "only pods of the new revision crash"
    assert row["rollout"] == "progressing" and row["guardPolicy"] is None

    # --until-done waits for a rollout that can't finish, and gives up at --timeout
    started = time.monotonic()
    proc = w.run("-n", w.ns, "--until-done", "--timeout", "2s", "-o", "json")
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started >= 2
    assert "timed out after 2s" in proc.stderr and f"{w.ns}/agent" in proc.stderr


def test_guard_pause_shows_in_status_table_until_done_and_kubectl_plugin(world: World) -> None:
    w = world
    w.nodes(6)
    policy = w.policy({"guard": {"failureThreshold": 2, "action": "Pause"}})
    w.apply(policy)
    guard = w.guard(w.policy_file(policy))
    w.apply(w.daemonset())
    w.rolled_out(6)
    guard.wait_ready()

    # a healthy new template: --until-done exits 0 once it is rolled out, and not before
    w.apply(w.daemonset(image="registry.example.com/agent:1.1"))
    proc = w.run("-n", w.ns, "--until-done", "--timeout", "30s", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    ds = w.ds()
    st = ds["status"]
    assert st["observedGeneration"] == ds["metadata"]["generation"]
    assert st["desiredNumberScheduled"] == st["updatedNumberScheduled"] == st["numberAvailable"] == 6
    last = json.loads(proc.stdout.strip().splitlines()[-1])  # --watch: one JSON document a line
    assert last["daemonsets"][0]["rollout"] == "complete"

    # a crash-looping template: the guard pauses it, status says so, since when and why
    w.apply(w.daemonset(annotations=CRASHLOOP, image="registry.example.com/agent:1.2-broken"))
    row = w.until_row("status to show the guard's pause", lambda r: r["rollout"] == "paused")
    annotations = w.ds()["metadata"]["annotations"]
    assert annotations["dsguard.io/paused"] == "true"
    paused = row["paused"]
    assert paused["current"] is True
    assert paused["reason"] == annotations["dsguard.io/pause-reason"] and "failing" in paused["reason"]
    assert paused["since"] == annotations["dsguard.io/paused-at"]
    since = dt.datetime.fromisoformat(paused["since"])
    assert abs((dt.datetime.now(dt.UTC) - since).total_seconds()) < 60
    assert paused["revision"] == row["updateRevision"] == annotations["dsguard.io/paused-revision"]
    assert row["guardPolicy"] == w.policy_name

    # --until-done: exit 1 at once on the paused rollout, naming it
    started = time.monotonic()
    proc = w.run("-n", w.ns, "--until-done", "--timeout", "30s")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert time.monotonic() - started < 15
    assert f"{w.ns}/agent paused by dsguard" in proc.stderr

    # the table, piped (no TTY): plain text with the name, the marker, since and why
    proc = w.run("-n", w.ns)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no colour codes when piped
    header, first = proc.stdout.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "POLICIES",
        "DESIRED",
        "UPDATED",
        "READY",
        "FAILING",
        "PAUSED",
        "VIOLATIONS",
    ]
    assert first.split()[:3] == ["agent", w.policy_name, "6"] and "PAUSED" in first.split()
    assert f"PAUSED by dsguard since {paused['since']}" in proc.stdout
    assert paused["reason"] in proc.stdout

    # `kubectl dsguard status`: kubectl finds kubectl-dsguard on PATH (global flags can't come
    # before a plugin's name, so the kubeconfig comes from $KUBECONFIG, as kubectl's own would)
    kubectl = w.cluster.kubectl_argv()[0]
    env = {
        **os.environ,
        "KUBECONFIG": str(w.cluster.kubeconfig),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    listed = subprocess.run(
        [kubectl, "plugin", "list"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert str(VENV_BIN / "kubectl-dsguard") in listed.stdout, listed.stdout + listed.stderr
    proc = subprocess.run(
        [kubectl, "dsguard", "status", "-n", w.ns, "-o", "json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [via_plugin] = json.loads(proc.stdout)["daemonsets"]
    assert via_plugin["name"] == "agent" and via_plugin["rollout"] == "paused"
    assert via_plugin["paused"]["since"] == paused["since"]


def _pod_lists(w: World) -> float:
    """LIST requests for pods the apiserver has served so far (its own metrics)."""
    text = w.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="pods"' in line
            and 'verb="LIST"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_watch_follows_the_cluster_without_listing_it_again(world: World) -> None:
    """--watch reads the cluster once, then follows it by watching: a node joining shows up in
    the next document, and a new revision, while the apiserver serves no new pod LIST however
    many intervals pass."""
    w = world
    w.nodes(2)
    w.apply(w.daemonset())
    w.apply(w.policy())
    w.rolled_out(2)
    cmd = [sys.executable, "-m", "dsguard.cli", "status", "--kubeconfig", str(w.cluster.kubeconfig),
           "-n", w.ns, "--watch", "-o", "json", "--interval", "100ms"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    docs: queue.Queue[Obj] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or ():
            docs.put(json.loads(line))

    reader = threading.Thread(target=read)
    reader.start()

    def next_row(ok: Callable[[Obj], bool], what: str, timeout: float = 30.0) -> Obj:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                doc = docs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            rows: list[Obj] = [r for r in doc["daemonsets"] if r["name"] == "agent"]
            if rows and ok(rows[0]):
                return rows[0]
        raise TimeoutError(f"no --watch document with {what} in {timeout}s; stderr: {proc.stderr}")

    try:
        first = next_row(complete(2), "agent complete on 2 nodes")
        lists_before, started = _pod_lists(w), time.monotonic()
        w.nodes(1)
        next_row(complete(3), "agent complete on 3 nodes, the new node included")
        w.apply(w.daemonset(image="registry.example.com/agent:1.1"))
        next_row(
            lambda r: complete(3)(r) and r["updateRevision"] != first["updateRevision"],
            "the new revision rolled out on all 3 nodes",
        )
        elapsed, lists = time.monotonic() - started, _pod_lists(w) - lists_before
        # Reading the cluster every 100 ms would have listed pods elapsed/0.1 times (>= 10); the
        # watch lists once when it starts (possibly inside this window). The count is the whole
        # apiserver's: one more LIST may come from another client (the controller-manager's
        # informers restart when other tests add or remove CRDs), so allow one.
        assert elapsed >= 1.0, f"the window ({elapsed:.1f}s) is too short to tell watching from polling"
        assert lists <= 3, f"{lists:g} pod LISTs in {elapsed:.1f}s"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        reader.join(timeout=15)
