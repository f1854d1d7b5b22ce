"""DaemonSetPolicy parsing: defaults, and every error reported with its field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dsguard.fielderrors import InvalidSpec
from dsguard.policy import Enforcement, GuardAction, OnExceed, OnMissing, UnknownVersion, parse_policy
from dsguard.scheduling import Toleration
from tests.support.builders import policy

CRD = Path(__file__).parents[2] / "manifests" / "crds" / "dsguard.io_daemonsetpolicies.yaml"


def test_full_example_from_the_issue() -> None:
    p = parse_policy(
        policy(
            "node-agents",
            {
                "match": {"namespaces": ["logging"], "namespaceSelector": {}, "selector": {}},
                "enforcement": "Enforce",
                "tolerations": {
                    "required": [
                        {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
                    ],
                    "onMissing": "Deny",
                    "coverage": {"nodeSelector": {}},
                },
                "rollout": {"maxUnavailable": "10%", "maxSurge": 1, "onExceed": "Deny"},
                "versions": {
                    "rules": [
                        {
                            "image": "registry.example.com/agent",
                            "compatibility": [{"kubernetes": ">=1.31.0", "versions": ">=2.0.0"}],
                        }
                    ],
                    "unknownVersion": "Warn",
                },
            },
        )
    )
    assert p.name == "node-agents"
    assert p.match.namespaces == frozenset({"logging"})
    assert p.tolerations is not None
    assert p.tolerations.required == (
        Toleration(key="dedicated", operator="Equal", value="infra", effect="NoSchedule"),
    )
    assert p.tolerations.coverage is not None
    assert p.rollout is not None and p.rollout.max_unavailable == "10%" and p.rollout.max_surge == 1
    assert p.versions is not None and p.versions.rules[0].image == "registry.example.com/agent"
    assert p.match.matches(namespace="logging", namespace_labels={}, labels={})
    assert not p.match.matches(namespace="kube-system", namespace_labels={}, labels={})


def test_defaults() -> None:
    p = parse_policy(policy("p", {"tolerations": {"required": []}, "rollout": {}, "versions": {"rules": []}}))
    assert p.enforcement is Enforcement.ENFORCE
    assert p.tolerations is not None and p.tolerations.on_missing is OnMissing.DENY
    assert p.rollout is not None and p.rollout.on_exceed is OnExceed.DENY
    assert p.versions is not None and p.versions.unknown_version is UnknownVersion.WARN
    # absent match governs every DaemonSet
    assert p.match.matches(namespace="any", namespace_labels={"a": "b"}, labels={"x": "y"})


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"rollout": {"maxUnavailable": "110%"}}, "spec.rollout.maxUnavailable: '110%' is over 100%"),
        ({"rollout": {"maxSurge": -1}}, "spec.rollout.maxSurge: -1 must be greater than or equal to 0"),
        ({"rollout": {"maxSurge": "5"}}, "spec.rollout.maxSurge: '5' must be an integer or a percentage"),
        ({"rollout": {"onExceed": "Shrink"}}, "spec.rollout.onExceed: 'Shrink' is not one of Deny, Clamp"),
        ({"enforcement": "enforce"}, "spec.enforcement: 'enforce' is not one of Enforce, Warn, Audit"),
        (
            {"tolerations": {"onMissing": "Patch"}},
            "spec.tolerations.onMissing: 'Patch' is not one of Deny, Add",
        ),
        ({"tolerations": {"onMising": "Add"}}, "spec.tolerations.onMising: unknown field"),
        (
            {"tolerations": {"required": [{"key": "a", "operator": "Exists", "value": "b"}]}},
            "spec.tolerations.required[0]",
        ),
        ({"match": {"namespaces": "logging"}}, "spec.match.namespaces: must be a list"),
        (
            {"match": {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}},
            "spec.match.selector.matchExpressions[0]",
        ),
        (
            {
                "versions": {
                    "rules": [{"image": "agent", "compatibility": [{"kubernetes": ">=1.x", "versions": "1"}]}]
                }
            },
            "spec.versions.rules[0].compatibility[0].kubernetes",
        ),
        (
            {
                "versions": {
                    "rules": [
                        {"image": "agent:1.0", "compatibility": [{"kubernetes": ">=1", "versions": ">=1"}]}
                    ]
                }
            },
            "spec.versions.rules[0].image: invalid image pattern 'agent:1.0'",
        ),
        (
            {"versions": {"rules": [{"image": "agent"}]}},
            "spec.versions.rules[0].compatibility: must list at least one",
        ),
        (
            {"versions": {"unknownVersion": "Maybe"}},
            "spec.versions.unknownVersion: 'Maybe' is not one of Allow, Warn, Deny",
        ),
    ],
)
def test_errors_name_the_field(spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_policy(policy("p", spec), source="policy.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("policy.yaml: ")


def test_registry_port_is_not_a_tag() -> None:
    p = parse_policy(
        policy(
            "p",
            {
                "versions": {
                    "rules": [
                        {
                            "image": "localhost:5000/agent",
                            "compatibility": [{"kubernetes": ">=1", "versions": ">=1"}],
                        }
                    ]
                }
            },
        )
    )
    assert p.versions is not None and p.versions.rules[0].image == "localhost:5000/agent"


def test_all_errors_at_once() -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_policy(
            {
                "apiVersion": "dsguard.io/v2",
                "kind": "Policy",
                "spec": {"enforcement": 3, "rollout": {"maxSurge": "x"}},
            }
        )
    paths = [e.path for e in info.value.errors]
    assert paths == ["apiVersion", "kind", "metadata.name", "spec.enforcement", "spec.rollout.maxSurge"]


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidSpec, match="expected a DaemonSetPolicy object"):
        parse_policy(["a"])


def test_crd_schema_covers_the_model() -> None:
    """The CRD's schema and the parser must agree on the field names, or the apiserver prunes a field."""
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(spec) == {"match", "enforcement", "tolerations", "rollout", "versions", "guard"}
    assert set(spec["guard"]["properties"]) == {
        "failureThreshold",
        "maxRestarts",
        "readyDeadlineSeconds",
        "progressDeadlineSeconds",
        "action",
        "alerts",
    }
    assert spec["guard"]["properties"]["action"]["enum"] == [a.value for a in GuardAction]
    assert set(spec["tolerations"]["properties"]) == {"required", "onMissing", "coverage"}
    assert set(spec["rollout"]["properties"]) == {"maxUnavailable", "maxSurge", "onExceed"}
    assert set(spec["versions"]["properties"]) == {"rules", "unknownVersion"}
    assert spec["enforcement"]["enum"] == [e.value for e in Enforcement]
    assert spec["rollout"]["properties"]["onExceed"]["enum"] == [e.value for e in OnExceed]
    assert spec["tolerations"]["properties"]["onMissing"]["enum"] == [e.value for e in OnMissing]
    assert spec["versions"]["properties"]["unknownVersion"]["enum"] == [e.value for e in UnknownVersion]


@pytest.mark.parametrize(
    "text",
    [
        ">=1.31.0",
        ">=1.31.0,<1.34",
        " >= v1.31 , < 1.34.0-rc.1 ",
        "==2",
        "!=2.1.0-debian-12-r3",
        ">1.0.0+k3s1",
        ">=1.x",
        "1.31",
        ">=",
        ">=1.31,",
        "=>1.0",
        ">=1.2.3.4",
        "<1.0 <2.0",
        "",
    ],
)
def test_crd_range_pattern_agrees_with_the_parser(text: str) -> None:
    """The apiserver checks ranges with the CRD's pattern; the webhook with VersionRange.parse."""
    import re

    from dsguard.versions import VersionRange

    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    entry = spec["versions"]["properties"]["rules"]["items"]["properties"]["compatibility"]["items"][
        "properties"
    ]
    assert entry["kubernetes"] == entry["versions"]
    schema_ok = bool(re.search(entry["kubernetes"]["pattern"], text)) and len(text) >= 1
    try:
        VersionRange.parse(text)
        parser_ok = True
    except ValueError:
        parser_ok = False
    assert schema_ok == parser_ok
