"""`dsguard check`: the rules offline, on files, directories and stdin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dsguard.cli import main

POLICY = """
apiVersion: dsguard.io/v1alpha1
kind: DaemonSetPolicy
metadata: {name: node-agents}
spec:
  match: {namespaces: [logging]}
  tolerations:
    required: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
    onMissing: Add
  rollout: {maxUnavailable: "10%", onExceed: Deny}
  versions:
    rules:
      - image: fluent/fluent-bit
        compatibility: [{kubernetes: ">=1.33.0", versions: ">=3.0.0"}]
"""

NODES = """
apiVersion: v1
kind: NodeList
items:
- {apiVersion: v1, kind: Node, metadata: {name: old-1}, status: {nodeInfo: {kubeletVersion: v1.32.4}}}
- {apiVersion: v1, kind: Node, metadata: {name: new-1}, status: {nodeInfo: {kubeletVersion: v1.33.1}}}
"""


def daemonset(
    name: str, image: str, *, max_unavailable: int | str = 1, namespace: str = "logging"
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": max_unavailable}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "nodes.yaml").write_text(NODES)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    good = daemonset("good", "fluent/fluent-bit:3.1.4")
    bad = daemonset("bad", "fluent/fluent-bit:2.2.0", max_unavailable=5)
    other = daemonset("elsewhere", "fluent/fluent-bit:1.0", namespace="web")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    (manifests / "a.yaml").write_text(yaml.safe_dump_all([good, cm]))
    (manifests / "b.yaml").write_text(yaml.safe_dump_all([bad, other]))
    return tmp_path


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_json_output_and_exit_1_when_denied(files: Path) -> None:
    code, out, _ = run(
        "check",
        "--policy",
        str(files / "policy.yaml"),
        "--nodes",
        str(files / "nodes.yaml"),
        "-o",
        "json",
        str(files / "manifests"),
    )
    assert code == 1
    results = {r["name"]: r for r in json.loads(out)}
    assert set(results) == {"good", "bad", "elsewhere"}
    assert results["good"]["allowed"] is True
    assert results["good"]["patch"] == [
        {
            "op": "add",
            "path": "/spec/template/spec/tolerations",
            "value": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
        }
    ]
    assert results["elsewhere"] == {**results["elsewhere"], "allowed": True, "policies": [], "patch": []}
    bad = results["bad"]
    assert bad["allowed"] is False
    rules = sorted(v["rule"] for v in bad["violations"])
    assert rules == ["rollout", "versions"]
    versions = next(v for v in bad["violations"] if v["rule"] == "versions")
    assert "new-1" in versions["message"] and "old-1" not in versions["message"]
    assert set(bad) >= {"kind", "namespace", "name", "allowed", "violations", "warnings", "patch"}


def test_text_output_counts_skipped_documents(files: Path) -> None:
    code, out, _ = run("check", "--policy", str(files / "policy.yaml"), str(files / "manifests" / "a.yaml"))
    assert code == 0
    assert "ALLOWED DaemonSet logging/good" in out
    assert "1 DaemonSet(s) checked: 1 allowed, 0 denied; 1 other document(s) skipped" in out


def test_stdin_and_kubernetes_version(files: Path) -> None:
    ds = yaml.safe_dump(daemonset("x", "fluent/fluent-bit:2.0.0"))
    args = ["check", "--policy", str(files / "policy.yaml"), "-"]
    assert run(*args, input=ds)[0] == 0  # no nodes, no version: nothing to judge versions against
    assert run(*args[:3], "--kubernetes-version", "v1.33.0", "-", input=ds)[0] == 1
    assert run(*args[:3], "--kubernetes-version", "v1.32.0", "-", input=ds)[0] == 0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"policy.yaml": "spec: {rollout: {maxSurge: 110%}}\nmetadata: {name: p}"}, "spec.rollout.maxSurge"),
        ({"policy.yaml": "a: [b"}, "not valid YAML"),
        ({"policy.yaml": POLICY + "---\n" + POLICY}, "names must be unique; repeated: node-agents"),
        ({}, "no such file or directory"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path: Path, setup: dict[str, str], message: str) -> None:
    for name, text in setup.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump(daemonset("x", "nginx:1")))
    code, out, err = run("check", "--policy", str(tmp_path / "policy.yaml"), str(tmp_path / "ds.yaml"))
    assert code == 2
    assert message in err
    assert out == ""


def test_nodes_file_must_hold_nodes(files: Path) -> None:
    code, _, err = run(
        "check", "--policy", str(files / "policy.yaml"), "--nodes", str(files / "policy.yaml"), "-", input=""
    )
    assert code == 2 and "expected kind Node, got 'DaemonSetPolicy'" in err


# --- --policy folders as teams keep them (a kustomization.yaml, other kinds) -------------------

KUSTOMIZATION = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [policy.yaml]\n"
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: logging}\n"


@pytest.mark.parametrize(
    ("extra", "skipped"),
    [
        ({}, ""),
        ({"kustomization.yaml": KUSTOMIZATION}, "1 other document(s) skipped"),
        (
            {"kustomization.yaml": KUSTOMIZATION, "ns.yaml": NAMESPACE + "---\n" + NAMESPACE},
            "3 other document(s) skipped",
        ),
    ],
)
def test_policy_folder_skips_other_kinds_and_says_how_many(
    tmp_path: Path, extra: dict[str, str], skipped: str
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(POLICY)
    for name, text in extra.items():
        (policies / name).write_text(text)
    ds = yaml.safe_dump(daemonset("x", "fluent/fluent-bit:3.1.4"))
    code, out, err = run("check", "--policy", str(policies), "-o", "json", "-", input=ds)
    assert code == 0, err
    assert json.loads(out)[0]["policies"] == ["node-agents"]
    if skipped:
        assert err.startswith(f"--policy: 1 DaemonSetPolicy(ies); {skipped} (")
        assert "Kustomization" in err
    else:
        assert err == ""


def test_the_shipped_examples_folder_is_a_policy_folder() -> None:
    examples = Path(__file__).parents[2] / "manifests" / "examples"
    ds = yaml.safe_dump(daemonset("x", "fluent/fluent-bit:3.1.4"))
    code, _, err = run("check", "--policy", str(examples), "-", input=ds)
    assert code in (0, 1), err
    assert "kustomization.yaml#1 Kustomization" in err


def test_a_folder_without_any_policy_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(KUSTOMIZATION)
    code, out, err = run("check", "--policy", str(tmp_path), "-", input="")
    assert code == 2 and out == ""
    assert "no DaemonSetPolicy found; 1 other document(s) skipped" in err


def test_json_lists_every_node_of_coverage_and_version_findings(tmp_path: Path) -> None:
    """The message names the first 10 nodes; -o json has all of them, with why (coverage) or
    their kubelet (versions)."""
    policy = yaml.safe_load(POLICY)
    policy["spec"]["tolerations"] = {"required": [], "coverage": {"nodeSelector": {}}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    gpu = {"key": "gpu", "value": "true", "effect": "NoSchedule"}
    nodes = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"gpu-{i:02}"}, "spec": {"taints": [gpu]}}
        for i in range(12)
    ] + [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"new-{i:02}"},
            "status": {"nodeInfo": {"kubeletVersion": "v1.33.1"}},
        }
        for i in range(11)
    ]
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}))
    ds = yaml.safe_dump(daemonset("x", "fluent/fluent-bit:2.2.0"))
    code, out, err = run(
        "check",
        "--policy",
        str(tmp_path / "policy.yaml"),
        "--nodes",
        str(tmp_path / "nodes.yaml"),
        "-o",
        "json",
        "-",
        input=ds,
    )
    assert code == 1, err
    violations = {v["rule"]: v for v in json.loads(out)[0]["violations"]}
    cov = violations["coverage"]
    assert "and 2 more" in cov["message"]
    assert [n["node"] for n in cov["nodes"]] == [f"gpu-{i:02}" for i in range(12)]
    assert cov["nodes"][11] == {
        "node": "gpu-11",
        "runs": False,
        "evictedAfterSeconds": None,
        "reasons": [
            {
                "kind": "taint",
                "field": "spec.template.spec.tolerations",
                "message": "taint gpu=true:NoSchedule is not tolerated",
                "taint": gpu,
            }
        ],
    }
    versions = violations["versions"]
    assert "and 1 more" in versions["message"]
    assert versions["nodes"] == [{"node": f"new-{i:02}", "kubeletVersion": "v1.33.1"} for i in range(11)]
