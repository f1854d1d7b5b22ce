"""`dsguard explain NAMESPACE/NAME` against the real DaemonSet controller: on kwok nodes with
taints and labels, the nodes explain says the pod runs on are the nodes the controller puts pods
on, the nodes it says no to never get one, and a NoExecute taint tolerated for 0s makes the
controller and the taint manager create and evict pods there in a loop, as explain warns.

The session cluster holds other tests' nodes: the DaemonSet selects this test's group only, and
only this test's nodes are compared (the others are explained as the nodeSelector's misses).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from localcluster.cluster import LocalCluster
from tests.support import builders
from tests.support.kubectl import Watch, apply
from tests.support.kwok import GROUP_LABEL, KwokNodes, in_group
from tests.support.polling import poll

REPO = Path(__file__).resolve().parents[2]


def explain(cluster: LocalCluster, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dsguard.cli", "explain", "--kubeconfig", str(cluster.kubeconfig), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def pod_node(pod: dict[str, Any]) -> str:
    """spec.nodeName, or the node the controller pinned a Pending pod to (matchFields)."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    terms = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    for t in terms:
        for f in t.get("matchFields") or []:
            if f.get("key") == "metadata.name":
                return str(f["values"][0])
    return ""


def test_explain_agrees_with_the_daemonset_controller(
    cluster: LocalCluster, namespace: str, kwok_nodes: KwokNodes, tmp_path: Path
) -> None:
    cpu = kwok_nodes(2, suffix="cpu", labels={"pool": "cpu"})
    (gpu,) = kwok_nodes(
        1,
        suffix="gpu",
        labels={"pool": "gpu"},
        taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}],
    )
    (edge,) = kwok_nodes(1, suffix="edge", labels={"pool": "edge"})
    (infra,) = kwok_nodes(
        1,
        suffix="infra",
        labels={"pool": "infra"},
        taints=[{"key": "dedicated", "value": "infra", "effect": "NoExecute"}],
    )
    ours = {*cpu, gpu, edge, infra}

    ds = builders.daemonset(
        "agent",
        namespace,
        node_selector=in_group(namespace),
        # Tolerated for 0s: the taint manager evicts each pod the controller creates on infra.
        tolerations=[
            {"key": "dedicated", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}
        ],
    )
    ds["spec"]["template"]["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "pool", "operator": "In", "values": ["cpu", "gpu", "infra"]}
                        ]
                    }
                ]
            }
        }
    }
    pods = Watch(cluster, "pods", "-n", namespace)
    try:
        apply(cluster, ds)
        # What the controller does: every pod it creates, by node, over a while.
        created: dict[str, set[str]] = {}
        live: dict[str, dict[str, Any]] = {}

        def drain() -> None:
            while True:
                try:
                    obj = pods.events.get_nowait()
                except queue.Empty:
                    return
                if obj is None:
                    raise AssertionError(f"the pod watch ended: {pods.stderr()}")
                name, node = obj["metadata"]["name"], pod_node(obj)
                created.setdefault(node, set()).add(name)
                if obj["metadata"].get("deletionTimestamp"):
                    live.pop(name, None)
                else:
                    live[name] = obj

        def settled() -> bool:
            drain()
            running = {
                pod_node(p) for p in live.values() if (p.get("status") or {}).get("phase") == "Running"
            }
            # Both cpu nodes have a Running pod, and infra has seen the loop: at least 3 pods created.
            return set(cpu) <= running and len(created.get(infra, ())) >= 3

        poll(
            settled,
            timeout=120,
            interval=0.5,
            what=f"pods on {cpu} and the eviction loop on {infra}: {created}",
        )
        # The nodes said no to get no pod, ever (a few more seconds of watching).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            drain()
            time.sleep(0.2)
        assert not created.get(gpu) and not created.get(edge), created

        code, out, err = explain(cluster, f"{namespace}/agent", "-o", "json")
        assert code == 0, err
        doc = json.loads(out)
        nodes = {n["node"]: n for n in doc["nodes"] if n["node"] in ours}
        assert set(nodes) == ours
        # explain's answer against the controller's pods.
        steady = {n for n in ours if n in created and n != infra}
        assert (
            {n for n, e in nodes.items() if e["runs"] and e["evictedAfterSeconds"] is None}
            == steady
            == set(cpu)
        )
        assert nodes[infra]["runs"] is True and nodes[infra]["evictedAfterSeconds"] == 0
        assert "the controller creates it again: a loop" in nodes[infra]["reasons"][0]["message"]
        assert {n for n, e in nodes.items() if not e["runs"]} == {gpu, edge} == ours - set(created)
        assert [r["message"] for r in nodes[gpu]["reasons"]] == ["taint gpu=true:NoSchedule is not tolerated"]
        assert [r["message"] for r in nodes[edge]["reasons"]] == [
            "nodeSelectorTerms[0] fails: pool in (cpu,gpu,infra) (has pool=edge)"
        ]
        for n in cpu:
            assert nodes[n]["pod"] is not None and nodes[n]["pod"]["phase"] == "Running"
        assert nodes[gpu]["pod"] is None and nodes[edge]["pod"] is None
        # Another test's node is a nodeSelector miss, with the label it lacks or has.
        others = [n for n in doc["nodes"] if n["node"] not in ours]
        for n in others:
            assert n["runs"] is False
            assert n["reasons"][0]["kind"] == "nodeSelector" and GROUP_LABEL in n["reasons"][0]["message"]

        # The table says the same, with the pods beside it.
        code, table, err = explain(cluster, f"{namespace}/agent")
        assert code == 0, err
        rows = {
            line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0] in ours
        }
        for n in cpu:
            assert rows[n].split()[1] == "yes" and "(Running)" in rows[n]
        assert "yes, evicted after 0s" in rows[infra]
        assert "taint gpu=true:NoSchedule is not tolerated" in rows[gpu]
        print(table)

        # `kubectl dsguard explain`: kubectl runs the kubectl-dsguard console script on PATH
        # (a plugin takes the kubeconfig from $KUBECONFIG).
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        proc = subprocess.run(
            [cluster.kubectl_argv()[0], "dsguard", "explain", f"{namespace}/agent", "-o", "json"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        via_plugin = {n["node"]: n["runs"] for n in json.loads(proc.stdout)["nodes"] if n["node"] in ours}
        assert via_plugin == {n: e["runs"] for n, e in nodes.items()}

        # The manifest (-f) against the cluster's nodes: the same answer, without pods.
        manifest = tmp_path / "agent.yaml"
        manifest.write_text(json.dumps(ds))
        code, out, err = explain(cluster, "-f", str(manifest), "-o", "json")
        assert code == 0, err
        [from_file] = json.loads(out)
        assert {
            n["node"]: (n["runs"], n["evictedAfterSeconds"]) for n in from_file["nodes"] if n["node"] in ours
        } == {n: (e["runs"], e["evictedAfterSeconds"]) for n, e in nodes.items()}
        assert all("pod" not in n for n in from_file["nodes"])
    finally:
        pods.close()


def test_explain_names_a_missing_daemonset(cluster: LocalCluster, namespace: str) -> None:
    code, out, err = explain(cluster, f"{namespace}/nope")
    assert code == 2 and out == ""
    assert f"DaemonSet {namespace}/nope not found" in err and "Traceback" not in err
