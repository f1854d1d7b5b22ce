"""Policy reports against the real control plane: with the report CRD installed (written for the
tests from the published schema, tests/cluster/report_crds/), the guard's background audit keeps
one report per namespace with governed DaemonSets, and what a reader lists (`kubectl get reports
-A`, Policy Reporter's informers) follows the cluster: a fix turns the fail into a pass, an
unchanged cluster writes nothing (same resourceVersion), and the report goes with the last
DaemonSet.

The guard runs on the host (HostGuard) watching the cluster's DaemonSetPolicies; the test's policy
is named after the test namespace and matches only that namespace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import LocalCluster
from localcluster.guard_host import HostGuard
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import KwokNodes, in_group
from tests.support.polling import poll

pytestmark = pytest.mark.cluster

CRDS = Path(__file__).resolve().parent / "report_crds"
Obj = dict[str, Any]
TAINT = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
IMAGE = "registry.example.com/agent"
REPORT = "dsguard-daemonsets"


def install_crd(cluster: LocalCluster, file: str, name: str) -> str:
    cluster.kubectl("apply", "-f", str(CRDS / file))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return name


def policy(name: str, namespace: str) -> Obj:
    """Every DaemonSet in `namespace` must tolerate the `dedicated` taint, and run an agent build
    its nodes' kubelets support."""
    return builders.policy(
        name,
        {
            "match": {"namespaces": [namespace]},
            "enforcement": "Audit",
            "tolerations": {"required": [TAINT], "onMissing": "Deny"},
            "versions": {
                "rules": [
                    {"image": IMAGE, "compatibility": [{"kubernetes": ">=1.33.0", "versions": ">=2.0.0"}]}
                ]
            },
        },
    )


def agent(name: str, namespace: str, *, tolerates: bool) -> Obj:
    obj = builders.daemonset(name, namespace, image=f"{IMAGE}:2.1.0", node_selector=in_group(namespace))
    if tolerates:
        obj["spec"]["template"]["spec"]["tolerations"] = [TAINT]
    return obj


def report(cluster: LocalCluster, resource: str, namespace: str) -> Obj | None:
    proc = cluster.kubectl("get", resource, REPORT, "-n", namespace, "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    found: Obj = json.loads(proc.stdout)
    return found


def results(rep: Obj) -> set[tuple[str, str, str]]:
    return {(r["resources"][0]["name"], r["rule"], r["result"]) for r in rep.get("results") or ()}


@pytest.fixture
def policy_name(cluster: LocalCluster, crd: str, namespace: str) -> Iterator[str]:
    yield namespace
    cluster.kubectl("delete", "daemonsetpolicy", namespace, "--ignore-not-found", check=False)


def test_openreports_follow_the_audit(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, policy_name: str
) -> None:
    install_crd(cluster, "openreports.io_reports.yaml", "reports.openreports.io")
    kwok_nodes(2, kubelet_version="v1.37.2")
    apply(cluster, agent("collector", namespace, tolerates=False))
    apply(cluster, agent("exporter", namespace, tolerates=True))
    apply(cluster, policy(policy_name, namespace))
    with HostGuard(
        cluster, lease_name=f"reports-{namespace}"[:60], tick=0.2,
        extra_args=["--policy-reports", "openreports"],
    ) as guard:  # fmt: skip
        rep = poll(lambda: report(cluster, "reports.openreports.io", namespace), what="the first report")
        assert rep["apiVersion"] == "openreports.io/v1alpha1" and rep["source"] == "dsguard"
        assert rep["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "dsguard"}
        assert results(rep) == {
            ("collector", "tolerations", "fail"), ("collector", "versions", "pass"),
            ("exporter", "tolerations", "pass"), ("exporter", "versions", "pass"),
        }  # fmt: skip
        assert rep["summary"] == {"pass": 3, "fail": 1, "warn": 0, "error": 0, "skip": 0}
        fail = rep["results"][0]
        assert fail["result"] == "fail" and fail["policy"] == policy_name and fail["severity"] == "medium"
        assert fail["resources"][0]["kind"] == "DaemonSet" and fail["resources"][0]["uid"]
        assert "dedicated" in fail["message"]

        # What a reader lists: the printer columns of the published CRD.
        listed = cluster.kubectl("get", "reports", "-A").stdout.splitlines()
        assert listed[0].split() == ["NAMESPACE", "NAME", "PASS", "FAIL", "WARN", "ERROR", "SKIP", "AGE"]
        row = next(line.split() for line in listed if line.split()[0] == namespace)
        assert row[1:7] == [REPORT, "3", "1", "0", "0", "0"], row

        # Nothing changes: another audit (a node joins elsewhere) writes nothing.
        version = rep["metadata"]["resourceVersion"]
        audits = guard.metric("dsguard_audit_runs_total")
        kwok_nodes(1, suffix="idle", labels={"dsguard.test/group": f"{namespace}-idle"})
        poll(lambda: guard.metric("dsguard_audit_runs_total") > audits, what="another audit")
        again = report(cluster, "reports.openreports.io", namespace)
        assert again is not None and again["metadata"]["resourceVersion"] == version, "no report churn"

        # The fix: the collector now tolerates the taint, and the report says pass.
        apply(cluster, agent("collector", namespace, tolerates=True))
        rep = poll(
            lambda: (
                (r := report(cluster, "reports.openreports.io", namespace))
                and r["summary"]["fail"] == 0
                and r
            ),
            what="the report after the fix",
        )
        assert rep["summary"]["pass"] == 4
        assert ("collector", "tolerations", "pass") in results(rep)

        # The last DaemonSet goes: so does the report.
        cluster.kubectl("delete", "daemonset", "collector", "exporter", "-n", namespace)
        poll(lambda: report(cluster, "reports.openreports.io", namespace) is None, what="the report deleted")
        assert guard.metric("dsguard_audit_report_writes_total", result="error") == 0
        assert guard.metric("dsguard_audit_report_writes_total", operation="delete", result="ok") >= 1


def test_wgpolicy_reports_and_the_cap(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, policy_name: str
) -> None:
    """The older format for older readers, and a report bounded at 2 results: fail first, the
    summary counting all, the annotation saying how many are left out."""
    install_crd(cluster, "wgpolicyk8s.io_policyreports.yaml", "policyreports.wgpolicyk8s.io")
    kwok_nodes(1, kubelet_version="v1.37.2")
    for name in ("a", "b", "c"):
        apply(cluster, agent(name, namespace, tolerates=name != "b"))
    apply(cluster, policy(policy_name, namespace))
    with HostGuard(
        cluster, lease_name=f"polr-{namespace}"[:60], tick=0.2,
        extra_args=["--policy-reports", "wgpolicy", "--policy-report-max-results", "2"],
    ):  # fmt: skip
        rep = poll(
            lambda: report(cluster, "policyreports.wgpolicyk8s.io", namespace), what="the PolicyReport"
        )
    assert rep["apiVersion"] == "wgpolicyk8s.io/v1alpha2" and rep["kind"] == "PolicyReport"
    assert rep["summary"] == {"pass": 5, "fail": 1, "warn": 0, "error": 0, "skip": 0}
    assert len(rep["results"]) == 2 and rep["results"][0]["result"] == "fail"
    assert rep["results"][0]["resources"][0]["name"] == "b"
    assert rep["metadata"]["annotations"]["dsguard.io/unlisted-results"] == "4"
    row = cluster.kubectl("get", "policyreports", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == [REPORT, "5", "1", "0", "0", "0"], row
