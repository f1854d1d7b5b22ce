"""`dsguard check -o sarif | junit`: valid against the published schemas, one SARIF result per
finding at the manifest line of the field at fault, one JUnit case per DaemonSet and policy."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmlschema
from click.testing import CliRunner

from dsguard.cli import main
from dsguard.cli.ci_reports import RULE_HELP
from dsguard.rules.engine import RULES

SCHEMAS = Path(__file__).parents[1] / "support" / "schemas"

POLICY = """
apiVersion: dsguard.io/v1alpha1
kind: DaemonSetPolicy
metadata: {name: node-agents}
spec:
  match: {namespaces: [logging]}
  tolerations:
    required: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
    onMissing: Deny
    coverage: {nodeSelector: {}}
  rollout: {maxUnavailable: 1, minReadySeconds: 10, onExceed: Deny}
  versions:
    rules:
      - image: fluent/fluent-bit
        compatibility: [{kubernetes: ">=1.33.0", versions: ">=3.0.0"}]
---
apiVersion: dsguard.io/v1alpha1
kind: DaemonSetPolicy
metadata: {name: watch-only}
spec:
  match: {namespaces: [logging]}
  enforcement: Audit
  rollout: {maxUnavailable: 1}
"""

NODES = """
apiVersion: v1
kind: NodeList
items:
- {apiVersion: v1, kind: Node, metadata: {name: n1}, status: {nodeInfo: {kubeletVersion: v1.33.1}}}
- apiVersion: v1
  kind: Node
  metadata: {name: gpu-1}
  spec: {taints: [{key: gpu, value: "true", effect: NoSchedule}]}
  status: {nodeInfo: {kubeletVersion: v1.33.1}}
"""

# Line numbers matter: the tests below name them.
BAD = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: bad, namespace: logging}
    spec:
      selector: {matchLabels: {app: bad}}
      minReadySeconds: 2
      updateStrategy:
        rollingUpdate:
          maxUnavailable: 5
      template:
        metadata: {labels: {app: bad}}
        spec:
          containers:
          - name: sidecar
            image: busybox:1.36
          - name: agent
            image: fluent/fluent-bit:2.2.0
    ---
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: elsewhere, namespace: web}
    spec:
      selector: {matchLabels: {app: e}}
      template:
        metadata: {labels: {app: e}}
        spec: {containers: [{name: c, image: nginx:1}]}
    """)

# (rule, field, line in BAD) of every denial of "bad"
EXPECTED = [
    ("tolerations", "spec.template.spec.tolerations", 12),  # absent: reported at its parent, `spec:`
    ("coverage", "spec.template.spec.tolerations", 12),
    ("versions", "spec.template.spec.containers[1].image", 17),
    ("rollout", "spec.updateStrategy.rollingUpdate.maxUnavailable", 9),
    ("rollout", "spec.minReadySeconds", 6),
]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "nodes.yaml").write_text(NODES)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "agents.yaml").write_text(BAD)
    monkeypatch.chdir(tmp_path)  # relative paths, as CI runs it from the checkout
    return tmp_path


def check(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["check", "--policy", "policy.yaml", "--nodes", "nodes.yaml", *args], input=input
    )
    return result.exit_code, result.stdout


def sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_sarif_is_valid_and_points_at_the_line_of_each_field(files: Path) -> None:
    code, out = check("-o", "sarif", "deploy/agents.yaml")
    assert code == 1
    log = json.loads(out)
    sarif_validator().validate(log)
    run = log["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    errors = [r for r in run["results"] if r["level"] == "error"]
    got = [
        (
            r["ruleId"],
            r["properties"]["field"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
        )
        for r in errors
    ]
    assert sorted(got) == sorted(EXPECTED)
    for r in errors:
        assert r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "deploy/agents.yaml"
        assert rules[r["ruleIndex"]] == r["ruleId"]
        assert r["message"]["text"].startswith('DaemonSet logging/bad: DaemonSetPolicy "node-agents": ')
    # The Audit policy's finding is a note on the same line as the denial.
    notes = [r for r in run["results"] if r["level"] == "note"]
    assert [(n["ruleId"], n["properties"]["policy"]) for n in notes] == [("rollout", "watch-only")]
    assert notes[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 9
    assert len({r["partialFingerprints"]["dsguardFinding/v1"] for r in run["results"]}) == len(run["results"])


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (lambda log: log.pop("version"), "'version' is a required property"),
        (lambda log: log["runs"][0]["results"][0].update(level="fatal"), "'fatal' is not one of"),
        (
            lambda log: log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"].update(
                startLine=0
            ),
            "0 is less than the minimum of 1",
        ),
    ],
)
def test_the_schema_check_can_fail(files: Path, broken: Any, why: str) -> None:
    log = json.loads(check("-o", "sarif", "deploy/agents.yaml")[1])
    broken(log)
    with pytest.raises(jsonschema.ValidationError, match=why):
        sarif_validator().validate(log)


def test_sarif_from_stdin_and_from_a_list(files: Path) -> None:
    # stdin has no file to point at: the DaemonSet is the (logical) location.
    out = check("-o", "sarif", "-", input=BAD)[1]
    log = json.loads(out)
    sarif_validator().validate(log)
    first = log["runs"][0]["results"][0]["locations"][0]
    assert "physicalLocation" not in first
    assert first["logicalLocations"][0]["fullyQualifiedName"] == "DaemonSet/logging/bad"
    # A `kind: List` (kubectl get -o yaml): lines inside its items.
    docs = [d for d in BAD.split("---\n")]
    items = "\n".join("- " + textwrap.indent(d, "  ")[2:] for d in docs)
    (files / "list.yaml").write_text(f"apiVersion: v1\nkind: List\nitems:\n{items}")
    log = json.loads(check("-o", "sarif", "list.yaml")[1])
    sarif_validator().validate(log)
    lines = {
        (r["ruleId"], r["properties"]["field"]): r["locations"][0]["physicalLocation"]["region"]["startLine"]
        for r in log["runs"][0]["results"]
        if r["level"] == "error"
    }
    assert {k: v - 3 for k, v in lines.items()} == {(rule, f): line for rule, f, line in EXPECTED}


def test_every_rule_has_help() -> None:
    assert {r.RULE for r in RULES} == set(RULE_HELP)


def test_json_output_names_field_and_line(files: Path) -> None:
    out = json.loads(check("-o", "json", "deploy/agents.yaml")[1])
    bad = next(r for r in out if r["name"] == "bad")
    assert sorted((v["rule"], v["field"], v["line"]) for v in bad["violations"]) == sorted(EXPECTED)


def test_junit_is_valid_one_case_per_daemonset_and_policy(files: Path) -> None:
    code, out = check("-o", "junit", "deploy/agents.yaml")
    assert code == 1
    xmlschema.XMLSchema(SCHEMAS / "junit-10.xsd").validate(out)
    root = ET.fromstring(out)  # noqa: S314 - our own output, just validated
    assert (root.get("tests"), root.get("failures")) == ("3", "1")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {
        ("DaemonSet logging/bad", "node-agents"),
        ("DaemonSet logging/bad", "watch-only"),
        ("DaemonSet web/elsewhere", "(no DaemonSetPolicy matches)"),
    }
    failure = cases["DaemonSet logging/bad", "node-agents"].find("failure")
    assert failure is not None and failure.text is not None
    assert failure.get("type") == "tolerations,coverage,versions,rollout"
    assert "line 17: spec.template.spec.containers[1].image: fluent/fluent-bit:2.2.0 is not compatible" in (
        failure.text
    )
    audit = cases["DaemonSet logging/bad", "watch-only"]
    assert audit.find("failure") is None
    out_text = audit.find("system-out")
    assert out_text is not None and (out_text.text or "").startswith("audit (rollout): ")
    suites = {s.get("name"): s.get("file") for s in root.iter("testsuite")}
    assert suites == dict.fromkeys(["DaemonSet logging/bad", "DaemonSet web/elsewhere"], "deploy/agents.yaml")


def test_the_junit_schema_check_can_fail(files: Path) -> None:
    out = check("-o", "junit", "deploy/agents.yaml")[1]
    broken = out.replace('<testsuite name="DaemonSet logging/bad"', '<testsuite title="x"', 1)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xmlschema.XMLSchema(SCHEMAS / "junit-10.xsd").validate(broken)


def test_paths_with_spaces_and_control_characters(files: Path) -> None:
    """A space in a path is %20 in the SARIF URI; a control character a YAML string can hold
    (escaped; here in a name) is replaced in the JUnit XML, which XML 1.0 could not carry."""
    (files / "my deploy").mkdir()
    (files / "my deploy" / "a.yaml").write_text(BAD.replace("{name: bad,", '{name: "bad\\x01",'))
    log = json.loads(check("-o", "sarif", "my deploy/a.yaml")[1])
    sarif_validator().validate(log)
    results = log["runs"][0]["results"]
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert uris == {"my%20deploy/a.yaml"}
    out = check("-o", "junit", "my deploy/a.yaml")[1]
    assert 'classname="DaemonSet logging/bad\ufffd"' in out
    xmlschema.XMLSchema(SCHEMAS / "junit-10.xsd").validate(out)
