"""`dsguard explain`: every node, whether the DaemonSet controller runs the pod there and why not
(PodPlacement.explain), in agreement with the decision the rules use (PodPlacement.evaluate);
the taint manager's eviction time for NoExecute taints tolerated for a while; the whole corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dsguard.cli import main
from dsguard.explain import PodOnNode, explain_daemonset, pods_by_node
from dsguard.scheduling import NodeInfo, PodPlacement, Taint, Toleration, eviction_after
from tests.support import builders

CORPUS = Path(__file__).parents[3] / "shared" / "corpus" / "daemonsets"

GPU = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
INFRA_EXEC = {"key": "dedicated", "value": "infra", "effect": "NoExecute"}
POOL_IN = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu", "gpu"]}]},
                {
                    "matchExpressions": [
                        {"key": "zone", "operator": "Exists"},
                        {"key": "cores", "operator": "Gt", "values": ["8"]},
                    ]
                },
            ]
        }
    }
}


def ds(**pod: Any) -> dict[str, Any]:
    obj = builders.daemonset("agent", "logging")
    obj["spec"]["template"]["spec"].update(pod)
    return obj


def info(
    name: str, labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None
) -> NodeInfo:
    return NodeInfo.from_node(builders.node(name, labels=labels, taints=taints))


@pytest.mark.parametrize(
    ("pod", "node", "runs", "messages", "evicted"),
    [
        ({}, info("plain"), True, [], None),
        (
            {},
            info("gpu", taints=[GPU]),
            False,
            ["taint nvidia.com/gpu=true:NoSchedule is not tolerated"],
            None,
        ),
        (
            {"nodeSelector": {"pool": "cpu", "os": "linux"}},
            info("n", {"pool": "gpu"}),
            False,
            [
                "nodeSelector pool=cpu (the node has pool=gpu)",
                "nodeSelector os=linux (the node has no os label)",
            ],
            None,
        ),
        (
            {"affinity": POOL_IN},
            info("n", {"pool": "edge", "cores": "4"}),
            False,
            [
                "nodeSelectorTerms[0] fails: pool in (cpu,gpu) (has pool=edge)",
                "nodeSelectorTerms[1] fails: zone (has no zone label); cores>8 (has cores=4)",
            ],
            None,
        ),
        ({"affinity": POOL_IN}, info("n", {"zone": "a", "cores": "16"}), True, [], None),
        (
            {"nodeName": "other"},
            info("n"),
            False,
            ["nodeName is other: the pod is bound to that node only"],
            None,
        ),
        # Every reason at once, not the first only.
        (
            {"nodeSelector": {"pool": "cpu"}},
            info("n", {"pool": "gpu"}, [GPU]),
            False,
            [
                "nodeSelector pool=cpu (the node has pool=gpu)",
                "taint nvidia.com/gpu=true:NoSchedule is not tolerated",
            ],
            None,
        ),
        # Runs, but not for long: the taint manager evicts it tolerationSeconds after start.
        (
            {
                "tolerations": [
                    {"key": "dedicated", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}
                ]
            },
            info("infra", taints=[INFRA_EXEC]),
            True,
            [
                "runs, but not for long: NoExecute taint dedicated=infra:NoExecute is tolerated for 0s "
                "only, then the taint manager evicts the pod (the controller creates it again: a loop)"
            ],
            0,
        ),
        (
            {
                "tolerations": [
                    {
                        "key": "dedicated",
                        "operator": "Exists",
                        "tolerationSeconds": 300,
                        "effect": "NoExecute",
                    }
                ]
            },
            info("infra", taints=[INFRA_EXEC]),
            True,
            [
                "runs, but not for long: NoExecute taint dedicated=infra:NoExecute is tolerated for 300s "
                "only, then the taint manager evicts the pod"
            ],
            300,
        ),
        # The controller's own not-ready toleration (no tolerationSeconds) replaces a user's bounded one.
        (
            {
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/not-ready",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 5,
                    }
                ]
            },
            info("nr", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
            True,
            [],
            None,
        ),
        # PreferNoSchedule never keeps a DaemonSet pod off.
        ({}, info("soft", taints=[{"key": "x", "effect": "PreferNoSchedule"}]), True, [], None),
    ],
)
def test_explain_node(
    pod: dict[str, Any], node: NodeInfo, runs: bool, messages: list[str], evicted: int | None
) -> None:
    e = explain_daemonset(ds(**pod), [node])
    (got,) = e.nodes
    assert (got.runs, [r.message for r in got.reasons], got.evicted_after) == (runs, messages, evicted)
    # The same decision as the one the rules and the webhook use.
    assert PodPlacement.from_pod_spec(ds(**pod)["spec"]["template"]["spec"]).evaluate(node).should_run is runs


def toleration(key: str, seconds: int | None, effect: str = "NoExecute", op: str = "Exists") -> Toleration:
    return Toleration(key=key, operator=op, effect=effect, toleration_seconds=seconds)


@pytest.mark.parametrize(
    ("taints", "tolerations", "expected"),
    [
        ([Taint("a", "", "NoExecute")], [toleration("a", None)], None),
        ([Taint("a", "", "NoExecute")], [toleration("a", 30)], 30),
        ([Taint("a", "", "NoExecute")], [toleration("a", -5)], 0),
        # GetMatchingTolerations takes the first toleration that tolerates a taint, not the longest.
        ([Taint("a", "", "NoExecute")], [toleration("a", 30), toleration("a", None)], 30),
        ([Taint("a", "", "NoExecute")], [toleration("a", None), toleration("a", 30)], None),
        # The least over the node's NoExecute taints.
        (
            [Taint("a", "", "NoExecute"), Taint("b", "", "NoExecute")],
            [toleration("a", 60), toleration("b", 10)],
            10,
        ),
        # NoSchedule taints play no part in eviction.
        ([Taint("a", "", "NoSchedule")], [toleration("a", None, effect="")], None),
    ],
)
def test_eviction_after(taints: list[Taint], tolerations: list[Toleration], expected: int | None) -> None:
    assert eviction_after(taints, tolerations)[0] == expected


def corpus_nodes() -> list[NodeInfo]:
    """Nodes in the shapes the corpus' selectors and tolerations are about."""
    return [
        info("linux", {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}),
        info("arm", {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}),
        info("windows", {"kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64"}),
        info(
            "cp",
            {"kubernetes.io/os": "linux"},
            [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        ),
        info("gpu", {"kubernetes.io/os": "linux", "nvidia.com/gpu.present": "true"}, [GPU]),
        info("infra", {"kubernetes.io/os": "linux"}, [INFRA_EXEC]),
        info("bare", {}, [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    ]


def corpus_daemonsets() -> list[dict[str, Any]]:
    return [
        d
        for f in sorted(CORPUS.glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if isinstance(d, dict) and d.get("kind") == "DaemonSet"
    ]


def test_explain_agrees_with_the_decision_on_the_whole_corpus() -> None:
    nodes = corpus_nodes()
    daemonsets = corpus_daemonsets()
    assert len(daemonsets) >= 30
    for obj in daemonsets:
        placement = PodPlacement.from_pod_spec(obj["spec"]["template"]["spec"])
        for n in nodes:
            explained, decided = placement.explain(n), placement.evaluate(n)
            assert explained.runs is decided.should_run, (obj["metadata"]["name"], n.name)
            taints = {r.taint for r in explained.reasons if r.kind == "taint"}
            assert taints == set(decided.untolerated), (obj["metadata"]["name"], n.name)
            assert explained.runs or explained.reasons


def test_explain_cli_on_the_whole_corpus(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    items = [
        builders.node(n.name, labels=dict(n.labels), taints=[t.to_dict() for t in n.taints])
        for n in corpus_nodes()
    ]
    nodes.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    result = CliRunner().invoke(main, ["explain", "-f", str(CORPUS), "--nodes", str(nodes), "-o", "json"])
    assert result.exit_code == 0, result.output
    docs = json.loads(result.stdout)
    assert len(docs) == len(corpus_daemonsets()) >= 30
    for d in docs:
        assert [n["node"] for n in d["nodes"]] == [i["metadata"]["name"] for i in items]
        assert d["summary"]["runs"] == sum(n["runs"] for n in d["nodes"])
        assert {t["key"] for t in d["addedTolerations"]} >= {
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        }
    # and the table, for every DaemonSet
    table = CliRunner().invoke(main, ["explain", "-f", str(CORPUS), "--nodes", str(nodes)])
    assert table.exit_code == 0, table.output
    assert table.stdout.count("The DaemonSet controller adds to every pod: ") == len(docs)


def pod(name: str, owner: str, *, node: str = "", pinned: str = "", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "ownerReferences": [{"uid": owner, "kind": "DaemonSet"}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {}
    if node:
        spec["nodeName"] = node
    if pinned:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [pinned]}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running" if node else "Pending"}}


def test_pods_by_node() -> None:
    pods = [
        pod("a-1", "uid-a", node="n1"),
        pod("a-2", "uid-a", pinned="n2"),  # Pending: pinned by the controller's matchFields term
        pod("a-old", "uid-a", node="n3", deleting=True),
        pod("a-3", "uid-a", node="n3"),
        pod("b-1", "uid-b", node="n1"),  # another DaemonSet's
    ]
    assert pods_by_node(pods, "uid-a") == {
        "n1": PodOnNode("a-1", "Running"),
        "n2": PodOnNode("a-2", "Pending"),
        "n3": PodOnNode("a-3", "Running"),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give NAMESPACE/NAME (from the cluster) or -f FILE"),
        (["ns/x", "-f", "x.yaml"], "give NAMESPACE/NAME (from the cluster) or -f FILE"),
        (["just-a-name", "--nodes", "nodes.yaml"], "expected NAMESPACE/NAME"),
        (["-f", "cm.yaml", "--nodes", "nodes.yaml"], "cm.yaml: no apps/v1 DaemonSet found"),
        (["-f", "ds.yaml", "--nodes", "cm.yaml"], "--nodes: cm.yaml#1: expected kind Node"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(builders.node("n")))
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump(ds()))
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    result = CliRunner().invoke(main, ["explain", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
