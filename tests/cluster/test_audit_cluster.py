"""The background audit against the real control plane: the guard re-judges DaemonSets that are
already running when nodes and policies change under them, into the DaemonSetPolicy's status
(what `kubectl get daemonsetpolicies` shows) and Events on the DaemonSet.

The guard runs as a child process (HostGuard) watching the cluster's DaemonSetPolicies; the test's
policy is cluster-scoped, named after the test namespace and matches only that namespace.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from localcluster.cluster import LocalCluster
from localcluster.guard_host import HostGuard
from localcluster.nodes import delete_nodes
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import KwokNodes, in_group
from tests.support.polling import poll

pytestmark = pytest.mark.cluster

T = TypeVar("T")
Obj = dict[str, Any]
IMAGE = "registry.example.com/agent"


def policy(name: str, namespace: str, *, required_taint: str | None = None) -> Obj:
    """An Audit policy for `namespace`: the agent's versions by kubelet, and a toleration for
    `required_taint` if given."""
    spec: Obj = {
        "match": {"namespaces": [namespace]},
        "enforcement": "Audit",
        "versions": {
            "rules": [
                {
                    "image": IMAGE,
                    "compatibility": [
                        {"kubernetes": ">=1.33.0", "versions": ">=2.0.0"},
                        {"kubernetes": "<1.33.0", "versions": "<2.0.0"},
                    ],
                }
            ]
        },
    }
    if required_taint:
        spec["tolerations"] = {
            "required": [{"key": required_taint, "operator": "Exists", "effect": "NoSchedule"}],
            "onMissing": "Deny",
        }
    return builders.policy(name, spec)


def status_of(cluster: LocalCluster, name: str) -> Obj:
    out: Obj = cluster.kubectl_json("get", "daemonsetpolicy", name)
    return out.get("status") or {}


def condition(status: Obj, type_: str) -> Obj:
    return next((c for c in status.get("conditions") or () if c.get("type") == type_), {})


def events(cluster: LocalCluster, namespace: str, reason: str) -> list[Obj]:
    items: list[Obj] = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"reason={reason}"
    )["items"]
    return items


@pytest.fixture
def guard(cluster: LocalCluster, crd: str, namespace: str) -> Iterator[HostGuard]:
    # Its own Lease, so no other test's guard holds leadership.
    # A resync of 10 s (the least allowed): a changed violation is announced again at most once
    # a resync period.
    with HostGuard(
        cluster, lease_name=f"audit-{namespace}"[:60], tick=0.2, extra_args=["--audit-resync", "10"]
    ) as g:
        yield g


@pytest.fixture
def policy_name(cluster: LocalCluster, crd: str, namespace: str) -> Iterator[str]:
    yield namespace
    cluster.kubectl("delete", "daemonsetpolicy", namespace, "--ignore-not-found", check=False)


def test_audit_follows_nodes_and_policies(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, guard: HostGuard, policy_name: str
) -> None:
    kwok_nodes(2, suffix="new", kubelet_version="v1.37.2")
    apply(
        cluster,
        builders.daemonset("agent", namespace, image=f"{IMAGE}:2.1.0", node_selector=in_group(namespace)),
    )
    apply(cluster, policy(policy_name, namespace))

    # A compliant DaemonSet: the status says so, and the printer columns show it.
    st = poll(
        lambda: (s := status_of(cluster, policy_name)).get("matchedDaemonSets") and s, what="the first audit"
    )
    assert st["violationCount"] == 0 and st["violations"] == []
    assert condition(st, "Compliant")["status"] == "True"
    assert condition(st, "Ready")["status"] == "True"
    row = cluster.kubectl("get", "daemonsetpolicy", policy_name, "--no-headers").stdout.split()
    header = cluster.kubectl("get", "daemonsetpolicy", policy_name).stdout.splitlines()[0].split()
    assert header[:5] == ["NAME", "ENFORCEMENT", "READY", "MATCHED", "VIOLATIONS"], header
    assert row[:5] == [policy_name, "Audit", "True", "1", "0"], row

    # An old node joins the pool the DaemonSet runs on: 2.1.0 doesn't support kubelet 1.32.
    old = kwok_nodes(1, suffix="old", kubelet_version="v1.32.6")[0]
    st = poll(
        lambda: (s := status_of(cluster, policy_name))["violationCount"] and s,
        what="a violation for the old node",
    )
    (entry,) = st["violations"]
    assert (entry["namespace"], entry["name"], entry["rules"]) == (namespace, "agent", ["versions"])
    assert old in entry["message"] and "v1.32.6" in entry["message"]
    compliant = condition(st, "Compliant")
    assert compliant["status"] == "False" and compliant["reason"] == "ViolationsFound"
    assert f"{namespace}/agent" in compliant["message"]
    ev = poll(lambda: events(cluster, namespace, "PolicyViolation"), what="a PolicyViolation Event")
    assert ev[0]["involvedObject"]["name"] == "agent" and ev[0]["type"] == "Warning"
    assert policy_name in ev[0]["message"] and old in ev[0]["message"]
    row = cluster.kubectl("get", "daemonsetpolicy", policy_name, "--no-headers").stdout.split()
    assert row[3:5] == ["1", "1"], row

    # A second old node: the same violation, changed. The status says so at once; an Event says
    # it again once a resync period has passed since the first (not one Event per node).
    old2 = kwok_nodes(1, suffix="old2", kubelet_version="v1.32.6")[0]
    poll(
        lambda: old2 in status_of(cluster, policy_name)["violations"][0]["message"],
        what="the status naming the second old node",
    )
    changed = poll(
        lambda: [
            e for e in events(cluster, namespace, "PolicyViolation") if "still violates" in e["message"]
        ],
        what="a PolicyViolation Event for the changed violation",
        timeout=60,
    )
    assert len(changed) == 1 and changed[0]["type"] == "Warning", changed
    assert old in changed[0]["message"] and old2 in changed[0]["message"], changed[0]["message"]

    # The nodes leave: compliant again, and the Event says the violation is resolved.
    delete_nodes(cluster.kubectl, [old, old2])
    st = poll(
        lambda: (s := status_of(cluster, policy_name))["violationCount"] == 0 and s,
        what="compliance after the node left",
    )
    assert condition(st, "Compliant")["status"] == "True"
    resolved = poll(
        lambda: events(cluster, namespace, "PolicyViolationResolved"), what="a PolicyViolationResolved Event"
    )
    assert resolved[0]["type"] == "Normal" and "versions" in resolved[0]["message"]
    assert len(events(cluster, namespace, "PolicyViolation")) == 2, "announced once, its change once"

    # The policy changes: it now requires a toleration the running DaemonSet lacks.
    generation_before = cluster.kubectl_json("get", "daemonsetpolicy", policy_name)["metadata"]["generation"]
    apply(cluster, policy(policy_name, namespace, required_taint="dedicated"))
    st = poll(
        lambda: (s := status_of(cluster, policy_name))["violationCount"] and s,
        what="a tolerations violation after the policy changed",
    )
    assert st["violations"][0]["rules"] == ["tolerations"]
    assert st["observedGeneration"] > generation_before
    assert condition(st, "Compliant")["observedGeneration"] == st["observedGeneration"]

    # The DaemonSet is fixed: compliant; a status-only rollout doesn't keep rewriting the status.
    fixed = builders.daemonset("agent", namespace, image=f"{IMAGE}:2.1.0", node_selector=in_group(namespace))
    fixed["spec"]["template"]["spec"]["tolerations"] = [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    ]
    apply(cluster, fixed)
    st = poll(
        lambda: (s := status_of(cluster, policy_name))["violationCount"] == 0 and s,
        what="compliance after the fix",
    )
    # Healthy as long as it runs: the one-shot read of the apiserver version (done by now, the
    # audit needs it) is not a loop that stopped.
    with urllib.request.urlopen(f"{guard.base_url}/healthz", timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.status == 200
    metrics = guard.metrics_text()
    assert f'dsguard_audit_violating_daemonsets{{policy="{policy_name}"}} 0.0' in metrics
    writes = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("dsguard_audit_status_writes_total")}  # fmt: skip
    assert writes.get('dsguard_audit_status_writes_total{result="ok"}', 0) >= 4, writes
    assert writes.get('dsguard_audit_status_writes_total{result="error"}', 0) == 0, writes


def test_audit_marks_invalid_policy_not_ready(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, guard: HostGuard, policy_name: str
) -> None:
    """A policy the CRD schema accepts but dsguard rejects (an unparseable version range) shows
    Ready=False with the reason, in `kubectl get`. (An image pattern with a tag: the schema can't
    tell a registry port from a tag, dsguard's parser can.)"""
    kwok_nodes(1, kubelet_version="v1.37.2")
    bad = policy(policy_name, namespace)
    bad["spec"]["versions"]["rules"][0]["image"] = f"{IMAGE}:2.1.0"
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"the CRD schema rejected the range; pick one only dsguard's parser rejects: {proc.stderr}"
        )
    st = poll(
        lambda: (s := status_of(cluster, policy_name)) and condition(s, "Ready") and s, what="Ready=False"
    )
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.versions.rules[0].image" in ready["message"] and "without tag" in ready["message"]
    assert "not enforced until fixed" in ready["message"]
    assert condition(st, "Compliant")["status"] == "Unknown"
    row = cluster.kubectl("get", "daemonsetpolicy", policy_name, "--no-headers").stdout.split()
    assert row[2] == "False", row
