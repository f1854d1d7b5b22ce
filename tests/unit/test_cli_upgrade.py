"""`dsguard upgrade-check`, offline: manifests (-f), --policy-file and --nodes, no cluster."""

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
  enforcement: Audit
  versions:
    rules:
      - image: fluent/fluent-bit
        compatibility:
          - {kubernetes: ">=1.35.0", versions: ">=3.0.0"}
    unknownVersion: Warn
"""

NODES = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: a-0, labels: {pool: a}}
  status: {nodeInfo: {kubeletVersion: v1.34.2}}
- apiVersion: v1
  kind: Node
  metadata: {name: a-1, labels: {pool: a}}
  status: {nodeInfo: {kubeletVersion: v1.34.2}}
- apiVersion: v1
  kind: Node
  metadata: {name: b-0, labels: {pool: b}}
  status: {nodeInfo: {kubeletVersion: v1.34.2}}
"""


def daemonset(
    name: str, image: str, *, namespace: str | None = "logging", pool: str | None = None
) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [{"name": "shipper", "image": image}]}
    if pool:
        pod["nodeSelector"] = {"pool": pool}
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta,
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"spec": pod}},
    }


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "nodes.yaml").write_text(NODES)
    return tmp_path


def write(path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def run(files: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    argv = [
        "upgrade-check",
        "--policy-file",
        str(files / "policy.yaml"),
        "--nodes",
        str(files / "nodes.yaml"),
        *args,
    ]
    result = CliRunner().invoke(main, argv, input=input)
    return result.exit_code, result.stdout, result.stderr


def test_exit_0_when_nothing_breaks(files: Path) -> None:
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:3.1.4"))
    code, out, err = run(files, "--to", "1.35", "-f", ds)
    assert (code, err) == (0, "")
    assert out.strip() == "1 DaemonSet(s) checked against Kubernetes v1.35.0 on 3 node(s): 0 break"


def test_exit_1_text_names_the_nodes(files: Path) -> None:
    ds = write(
        files / "ds.yaml",
        daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"),
        daemonset("web-agent", "fluent/fluent-bit:1.0.0", namespace="web"),  # no policy matches
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
    )
    code, out, _ = run(files, "--to", "v1.35.0", "-f", ds)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"BREAKS DaemonSet logging/fluent-bit ({ds}#1)"
    assert "images: fluent/fluent-bit:2.2.0" in lines[1]
    assert 'DaemonSetPolicy "node-agents" [new]: spec.template.spec.containers[0].image:' in lines[2]
    assert "not compatible with 3 node(s) running kubelet v1.35.0 (a-0, a-1, b-0)" in lines[2]
    assert lines[3] == "  nodes that would break (3): a-0, a-1, b-0"
    assert lines[-1] == (
        "1 DaemonSet(s) checked against Kubernetes v1.35.0 on 3 node(s): 1 break (1 newly, 0 already broken "
        "today); 1 not governed by a version rule; 1 other document(s) skipped"
    )


def test_json_schema(files: Path) -> None:
    ds = write(
        files / "ds.yaml",
        daemonset("fluent-bit", "fluent/fluent-bit:2.2.0", pool="a"),
        daemonset("on-b", "fluent/fluent-bit:2.2.0", pool="b"),
        daemonset("untagged", "fluent/fluent-bit"),
    )
    code, out, _ = run(files, "--to", "1.35.1", "--node-selector", "pool=a", "-f", ds, "-o", "json")
    assert code == 1
    doc = json.loads(out)
    assert set(doc) == {
        "target",
        "nodeSelector",
        "apiserverUpgraded",
        "nodesUpgraded",
        "nodesTotal",
        "daemonSets",
        "summary",
    }
    assert (doc["target"], doc["nodeSelector"], doc["apiserverUpgraded"]) == ("v1.35.1", "pool=a", False)
    assert (doc["nodesUpgraded"], doc["nodesTotal"]) == (2, 3)
    by_name = {d["name"]: d for d in doc["daemonSets"]}
    assert {n: d["status"] for n, d in by_name.items()} == {
        "fluent-bit": "breaks",
        "on-b": "ok",
        "untagged": "cannot-check",
    }
    breaks = by_name["fluent-bit"]
    assert set(breaks) == {
        "namespace", "name", "source", "status", "policies", "images", "nodes", "newlyBrokenNodes", "findings"
    }  # fmt: skip
    assert (breaks["namespace"], breaks["source"], breaks["policies"]) == (
        "logging",
        f"{ds}#1",
        ["node-agents"],
    )
    assert breaks["images"] == [
        {
            "container": "shipper",
            "path": "spec.template.spec.containers[0].image",
            "image": "fluent/fluent-bit:2.2.0",
        }
    ]
    assert breaks["nodes"] == breaks["newlyBrokenNodes"] == ["a-0", "a-1"]
    (finding,) = breaks["findings"]
    assert finding == {
        **finding,
        "policy": "node-agents",
        "container": "shipper",
        "path": "spec.template.spec.containers[0].image",
        "kind": "incompatible",
        "severity": "violation",
        "new": True,
        "nodes": ["a-0", "a-1"],
    }
    assert "(a-0, a-1)" in finding["message"]
    assert by_name["on-b"]["findings"] == [] and by_name["on-b"]["nodes"] == []
    (unknown,) = by_name["untagged"]["findings"]
    assert (unknown["kind"], unknown["severity"], unknown["nodes"]) == ("unknown-version", "warning", [])
    assert doc["summary"] == {
        "checked": 3,
        "breaking": 1,
        "ok": 1,
        "breaks": 1,
        "alreadyBroken": 0,
        "cannotCheck": 1,
        "notGoverned": 0,
        "skippedDocuments": 0,
    }


def test_yaml_output_is_the_same_document(files: Path) -> None:
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    code_j, out_j, _ = run(files, "--to", "1.35", "-f", ds, "-o", "json")
    code_y, out_y, _ = run(files, "--to", "1.35", "-f", ds, "-o", "yaml")
    assert code_j == code_y == 1
    assert yaml.safe_load(out_y) == json.loads(out_j)


def test_already_broken_exits_1(files: Path) -> None:
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    nodes = files / "new-nodes.yaml"
    nodes.write_text(NODES.replace("v1.34.2", "v1.35.3"))
    result = CliRunner().invoke(
        main,
        [
            "upgrade-check",
            "--to",
            "1.36",
            "--policy-file",
            str(files / "policy.yaml"),
            "--nodes",
            str(nodes),
            "-f",
            ds,
        ],
    )
    assert result.exit_code == 1
    assert result.stdout.startswith("ALREADY BROKEN DaemonSet logging/fluent-bit")
    assert "[already today]" in result.stdout
    assert "1 break (0 newly, 1 already broken today)" in result.stdout


def test_node_pool_upgrade_leaves_other_pools(files: Path) -> None:
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0", pool="b"))
    code, out, _ = run(files, "--to", "1.35", "--node-selector", "pool=a", "-f", ds)
    assert code == 0
    assert out.strip() == (
        "1 DaemonSet(s) checked against Kubernetes v1.35.0 on 2 node(s) matching pool=a "
        "(of 3; the apiserver is not upgraded): 0 break"
    )
    code, out, _ = run(files, "--to", "1.35", "--node-selector", "pool!=a", "-f", ds)
    assert code == 1
    assert "nodes that would break (1): b-0" in out


def test_many_nodes_are_cut_at_10(files: Path) -> None:
    nodes = files / "many.yaml"
    nodes.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "NodeList",
                "items": [
                    {
                        "kind": "Node",
                        "metadata": {"name": f"n{i:02}"},
                        "status": {"nodeInfo": {"kubeletVersion": "v1.30.0"}},
                    }
                    for i in range(13)
                ],
            }
        )
    )
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    result = CliRunner().invoke(
        main,
        [
            "upgrade-check",
            "--to",
            "1.35",
            "--policy-file",
            str(files / "policy.yaml"),
            "--nodes",
            str(nodes),
            "-f",
            ds,
        ],
    )
    assert result.exit_code == 1
    shown = ", ".join(f"n{i:02}" for i in range(10))
    assert f"  nodes that would break (13): {shown} and 3 more" in result.stdout.splitlines()


def test_stdin_and_namespace_from_dash_n(files: Path) -> None:
    text = yaml.safe_dump(daemonset("fluent-bit", "fluent/fluent-bit:2.2.0", namespace=None))
    code, out, _ = run(files, "--to", "1.35", "-f", "-", input=text)
    assert code == 0 and "1 not governed" in out  # namespace "default": the policy doesn't match
    code, out, _ = run(files, "--to", "1.35", "-f", "-", "-n", "logging", input=text)
    assert code == 1 and "BREAKS DaemonSet logging/fluent-bit (<stdin>#1)" in out


@pytest.mark.parametrize("to", ["latest", "1", "1.35.0.1", "v1.x", ">=1.35", ""])
def test_bad_to_exits_2(files: Path, to: str) -> None:
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    code, out, err = run(files, "--to", to, "-f", ds)
    assert code == 2
    assert "Invalid value for '--to'" in err
    assert "is not a Kubernetes version: expected MAJOR.MINOR[.PATCH] such as 1.35.0, v1.35.0 or 1.35" in err
    assert out == ""


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("pool in (a)", "set-based requirements (in, notin) are not supported"),
        ("pool=a,", "empty requirement"),
        ("po ol=a", "bad requirement 'po ol=a'"),
        ("pool=c", "--node-selector pool=c matches none of the 3 node(s)"),
    ],
)
def test_bad_node_selector_exits_2(files: Path, selector: str, message: str) -> None:
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    code, out, err = run(files, "--to", "1.35", "--node-selector", selector, "-f", ds)
    assert code == 2
    assert message in err
    assert out == ""


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ({"ds.yaml": "a: [b"}, ["-f", "ds.yaml"], "not valid YAML"),
        ({}, ["-f", "missing.yaml"], "missing.yaml: no such file or directory"),
        (
            {"policy.yaml": "metadata: {name: p}\nspec: {versions: {rules: [{image: x}]}}"},
            ["-f", "ds.yaml"],
            "compatibility",
        ),
        ({"nodes.yaml": "kind: Pod\nmetadata: {name: p}"}, ["-f", "ds.yaml"], "expected kind Node"),
        (
            {"ds.yaml": yaml.safe_dump(daemonset("x", "fluent/fluent-bit:1", namespace="web"))},
            ["-f", "ds.yaml", "-n", "logging"],
            "does not match -n 'logging'",
        ),
    ],
)
def test_bad_input_exits_2(files: Path, setup: dict[str, str], args: list[str], message: str) -> None:
    write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    for name, text in setup.items():
        (files / name).write_text(text)
    argv = [a if not a.endswith(".yaml") else str(files / a) for a in args]
    code, out, err = run(files, "--to", "1.35", *argv)
    assert code == 2, out
    assert message in err


def test_no_cluster_is_contacted_with_everything_from_files(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dsguard.kube

    built: list[object] = []

    async def refuse(*args: object, **kwargs: object) -> None:
        built.append(args)
        raise AssertionError("an API client was built")

    monkeypatch.setattr(dsguard.kube, "api_client", refuse)
    monkeypatch.setenv("KUBECONFIG", str(files / "no-such-kubeconfig"))
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:2.2.0"))
    code, out, err = run(files, "--to", "1.35", "-f", ds)
    assert built == []
    assert code == 1, err
    assert out.startswith("BREAKS DaemonSet logging/fluent-bit")


def test_unreachable_cluster_exits_2(files: Path, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = CliRunner().invoke(main, ["upgrade-check", "--to", "1.35", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 2, result.output
    assert "cannot reach the apiserver" in result.stderr


def test_policy_folder_with_a_kustomization(files: Path) -> None:
    """--policy-file DIR as teams keep it: other kinds are skipped and counted on stderr."""
    folder = files / "policies"
    folder.mkdir()
    (folder / "policy.yaml").write_text(POLICY)
    (folder / "kustomization.yaml").write_text("kind: Kustomization\nresources: [policy.yaml]\n")
    ds = write(files / "ds.yaml", daemonset("fluent-bit", "fluent/fluent-bit:3.1.4"))
    argv = [
        "upgrade-check",
        "--policy-file",
        str(folder),
        "--nodes",
        str(files / "nodes.yaml"),
        "--to",
        "1.35",
        "-f",
        ds,
    ]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("--policy-file: 1 DaemonSetPolicy(ies); 1 other document(s) skipped (")
    assert "kustomization.yaml#1 Kustomization" in result.stderr
