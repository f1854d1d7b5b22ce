"""`dsguard plan -f`: the waves offline, on the corpus of real DaemonSets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dsguard.cli import main

CORPUS = Path(__file__).parents[3] / "shared" / "corpus" / "daemonsets"
ZONE = "topology.kubernetes.io/zone"


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    policy = {
        "apiVersion": "dsguard.io/v1alpha1",
        "kind": "DaemonSetPolicy",
        "metadata": {"name": "waves"},
        "spec": {"guard": {"waves": {"canary": {"nodes": 2}, "groupBy": ZONE, "order": ["b"]}}},
    }
    nodes = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"{zone}-{i}",
                    "labels": {ZONE: zone, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
                },
            }
            for zone in "abc"
            for i in range(3)
        ],
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(nodes))
    return tmp_path / "p.yaml", tmp_path / "nodes.yaml"


def test_every_corpus_daemonset_gets_a_plan(inputs: tuple[Path, Path]) -> None:
    policy, nodes = inputs
    args = ["plan", "-f", str(CORPUS), "--nodes", str(nodes), "--policy-file", str(policy), "-o", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    daemonsets = sum(
        1
        for f in CORPUS.glob("*.yaml")
        for d in yaml.safe_load_all(f.read_text())
        if isinstance(d, dict) and d.get("kind") == "DaemonSet"
    )
    assert len(reports) == daemonsets >= 30
    for r in reports:
        nodes_planned = [n for w in r["waves"] for n in w["nodes"]]
        assert len(nodes_planned) == len(set(nodes_planned)), r["daemonset"]
        if r["waves"]:
            assert r["waves"][0]["name"] == "canary" and len(r["waves"][0]["nodes"]) == 2, r


def test_the_table_names_the_waves(inputs: tuple[Path, Path]) -> None:
    policy, nodes = inputs
    ds = CORPUS / "14-fluent-bit.yaml"
    result = CliRunner().invoke(
        main, ["plan", "-f", str(ds), "--nodes", str(nodes), "--policy-file", str(policy)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "  1. canary: 2 node(s): b-0, a-0",
        f"  2. {ZONE}=b: 2 node(s): b-1, b-2",
        f"  3. {ZONE}=a: 2 node(s): a-1, a-2",
        f"  4. {ZONE}=c: 3 node(s): c-0, c-1, c-2",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give NAMESPACE/NAME"),
        (["-f", "x.yaml", "ns/name"], "not both"),
        (["-f", str(CORPUS / "14-fluent-bit.yaml")], "needs --policy-file"),
    ],
)
def test_bad_input(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["plan", *args])
    assert result.exit_code == 2 and message in result.output, result.output
