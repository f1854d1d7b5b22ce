"""`dsguard upgrade-check` against the real control plane: DaemonSets, Nodes and DaemonSetPolicies
read from the cluster (or DaemonSets from files), run as the installed command would be.

Each test has its own namespace, kwok nodes labelled ``dsguard.test/group=<namespace>`` (and a
``dsguard.test/pool``), one cluster-scoped DaemonSetPolicy named after the namespace that matches
only that namespace, and DaemonSets that select only the test's nodes. The session cluster holds
other tests' nodes too, so node counts are never asserted, only the names of the test's nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.cluster import LocalCluster
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.kwok import GROUP_LABEL, KwokNodes, in_group
from tests.support.polling import poll

REPO = Path(__file__).resolve().parents[2]
POOL_LABEL = "dsguard.test/pool"
AGENT = "registry.example.com/agent"

ApplyPolicy = Callable[[Mapping[str, Any]], None]


@pytest.fixture
def apply_policy(cluster: LocalCluster, namespace: str, crd: str) -> Iterator[ApplyPolicy]:
    """Create or replace the test's DaemonSetPolicy (named after the namespace, matching only it)."""

    def apply_versions(versions: Mapping[str, Any]) -> None:
        spec = {"enforcement": "Warn", "versions": versions}
        apply(cluster, builders.policy(namespace, spec, namespaces=[namespace]))

    yield apply_versions
    cluster.kubectl("delete", "daemonsetpolicy", namespace, "--ignore-not-found", check=False)


def versions(allowed: str) -> dict[str, Any]:
    return {"rules": [{"image": AGENT, "compatibility": [{"kubernetes": ">=1.35.0", "versions": allowed}]}]}


def upgrade_check(cluster: LocalCluster, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsguard.cli",
            "upgrade-check",
            "--kubeconfig",
            str(cluster.kubeconfig),
            *args,
        ],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def upgrade_json(cluster: LocalCluster, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = upgrade_check(cluster, *args, "-o", "json")
    assert code in (0, 1), f"exit {code}: {err}"
    return code, json.loads(out)


def by_name(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in doc["daemonSets"]}


def wait_kubelet_versions(cluster: LocalCluster, names: list[str], version: str, timeout: float = 15) -> None:
    """kwok keeps the nodeInfo a node was created with; check it rather than assume it."""

    def seen() -> dict[str, str]:
        got = cluster.kubectl_json("get", "nodes", *names)
        nodes = got.get("items", [got])  # one name: kubectl prints the object itself
        return {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes}

    want = dict.fromkeys(names, version)
    try:
        poll(lambda: seen() == want, what=f"nodes {names} on kubelet {version}", timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"nodes {names}: kubelet versions {seen()}, want {version}") from None


def test_upgrade_check_reads_the_cluster_and_follows_its_changes(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, apply_policy: ApplyPolicy
) -> None:
    ns = namespace
    old = kwok_nodes(2, suffix="old", labels={POOL_LABEL: "old"}, kubelet_version="v1.34.2")
    wait_kubelet_versions(cluster, old, "v1.34.2")
    apply_policy(versions(">=2.0.0"))
    apply(cluster, builders.daemonset("agent", ns, image=f"{AGENT}:1.9.0", node_selector=in_group(ns)))
    ns_args = ("-n", ns)

    # Every node to 1.35: the agent's 1.9.0 is not allowed there, on both of the test's nodes.
    code, out, err = upgrade_check(cluster, "--to", "1.35", *ns_args)
    assert code == 1, err
    assert f"BREAKS DaemonSet {ns}/agent" in out
    assert f"nodes that would break (2): {old[0]}, {old[1]}" in out
    assert out.splitlines()[-1].startswith("1 DaemonSet(s) checked against Kubernetes v1.35.0 on ")
    code, doc = upgrade_json(cluster, "--to", "v1.35.0", *ns_args)
    agent = by_name(doc)["agent"]
    assert (code, agent["status"], agent["policies"]) == (1, "breaks", [ns])
    assert agent["nodes"] == agent["newlyBrokenNodes"] == old
    assert doc["apiserverUpgraded"] is True

    # Below the rule's range nothing breaks.
    assert upgrade_check(cluster, "--to", "1.34.9", *ns_args)[0] == 0

    # A canary pool already on 1.35.1: upgrading it is "already broken", upgrading all adds the rest.
    (new,) = kwok_nodes(1, suffix="new", labels={POOL_LABEL: "new"}, kubelet_version="v1.35.1")
    wait_kubelet_versions(cluster, [new], "v1.35.1")
    code, doc = upgrade_json(cluster, "--to", "1.35.1", *ns_args)
    agent = by_name(doc)["agent"]
    assert (code, agent["status"]) == (1, "breaks")
    assert sorted(agent["nodes"]) == sorted([*old, new])
    assert agent["newlyBrokenNodes"] == old
    pool_new = ("--node-selector", f"{GROUP_LABEL}={ns},{POOL_LABEL}=new")
    code, doc = upgrade_json(cluster, "--to", "1.36", *pool_new, *ns_args)
    agent = by_name(doc)["agent"]
    assert (code, doc["nodesUpgraded"], doc["apiserverUpgraded"]) == (1, 1, False)
    assert (agent["status"], agent["nodes"], agent["newlyBrokenNodes"]) == ("already-broken", [new], [])

    # A DaemonSet only on the old pool is unaffected by upgrading the new pool; upgrading the old
    # pool breaks it, and only there.
    apply(
        cluster,
        builders.daemonset(
            "old-only", ns, image=f"{AGENT}:1.9.0", node_selector={**in_group(ns), POOL_LABEL: "old"}
        ),
    )
    code, doc = upgrade_json(cluster, "--to", "1.36", *pool_new, *ns_args)
    assert by_name(doc)["old-only"]["status"] == "ok"
    pool_old = ("--node-selector", f"{GROUP_LABEL}={ns},{POOL_LABEL}=old")
    code, doc = upgrade_json(cluster, "--to", "1.36", *pool_old, *ns_args)
    old_only = by_name(doc)["old-only"]
    assert (code, old_only["status"], old_only["nodes"]) == (1, "breaks", old)

    # Widening the policy's range makes the same upgrade safe.
    apply_policy(versions(">=1.0.0"))
    code, doc = upgrade_json(cluster, "--to", "1.36", *ns_args)
    assert code == 0
    assert {n: d["status"] for n, d in by_name(doc).items()} == {"agent": "ok", "old-only": "ok"}
    code, out, _ = upgrade_check(cluster, "--to", "1.36", *ns_args)
    assert code == 0 and out.rstrip().endswith(": 0 break")


def test_upgrade_check_manifests_with_the_clusters_nodes_and_policies(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, apply_policy: ApplyPolicy, tmp_path: Path
) -> None:
    ns = namespace
    nodes = kwok_nodes(2, kubelet_version="v1.34.2")
    wait_kubelet_versions(cluster, nodes, "v1.34.2")
    apply_policy(versions(">=2.0.0"))
    bad = builders.daemonset("agent", ns, image=f"{AGENT}:1.9.0", node_selector=in_group(ns))
    del bad["metadata"]["namespace"]  # -n fills it in, as kubectl apply -n does
    good = builders.daemonset("fixed", ns, image=f"{AGENT}:2.1.0", node_selector=in_group(ns))
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([bad, cm]))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))

    code, out, err = upgrade_check(cluster, "--to", "1.35", "-f", str(tmp_path), "-n", ns)
    assert code == 1, err
    assert f"BREAKS DaemonSet {ns}/agent ({tmp_path / 'bad.yaml'}#1)" in out
    assert f"nodes that would break (2): {nodes[0]}, {nodes[1]}" in out
    assert "fixed" not in out  # compatible: no block
    assert out.rstrip().endswith("; 1 other document(s) skipped")
    assert "2 DaemonSet(s) checked" in out

    # The DaemonSets are the files' alone: the cluster has none in the namespace.
    assert cluster.kubectl_json("get", "daemonsets", "-n", ns)["items"] == []
    code, out, err = upgrade_check(cluster, "--to", "1.35", "-f", str(tmp_path / "good.yaml"))
    assert code == 0, err
    code, out, err = upgrade_check(cluster, "--to", "1.35", "-f", "-", "-n", ns, stdin=yaml.safe_dump(bad))
    assert code == 1 and f"{ns}/agent (<stdin>#1)" in out, err
