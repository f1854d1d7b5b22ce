"""DaemonSetPolicy parsing: defaults, and every error reported with its field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dsguard.fielderrors import InvalidSpec
from dsguard.policy import (
    INLINE_URL_PATTERN,
    WAVES_FIELDS,
    AlertSink,
    AlertType,
    Approval,
    Enforcement,
    GuardAction,
    OnExceed,
    OnMissing,
    SecretRef,
    UnknownVersion,
    parse_policy,
)
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
        "waves",
        "gates",
    }
    assert spec["guard"]["properties"]["action"]["enum"] == [a.value for a in GuardAction]
    assert set(spec["tolerations"]["properties"]) == {"required", "onMissing", "coverage"}
    assert set(spec["rollout"]["properties"]) == {"maxUnavailable", "maxSurge", "minReadySeconds", "onExceed"}
    waves = spec["guard"]["properties"]["waves"]["properties"]
    assert set(waves) == WAVES_FIELDS
    assert waves["approval"]["enum"] == [a.value for a in Approval]
    gates = spec["guard"]["properties"]["gates"]["properties"]
    assert set(gates) == {"apiserver", "prometheus"}
    assert set(gates["prometheus"]["items"]["properties"]) == {"url", "query", "max", "min"}
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


WAVES_OK = {
    "guard": {
        "waves": {
            "canary": {"nodes": "1%"},
            "groupBy": "topology.kubernetes.io/zone",
            "order": ["us-east-1a", "us-east-1b"],
            "maxUnavailable": 1,
            "bakeSeconds": 600,
            "approval": "Manual",
        },
        "gates": {
            "apiserver": {"maxRequestRateIncrease": "50%"},
            "prometheus": [{"url": "http://prometheus:9090", "query": "sum(rate(x[2m]))", "max": 0.5}],
        },
    },
    "rollout": {"minReadySeconds": 30, "onExceed": "Clamp"},
}


def test_waves_and_gates_parse() -> None:
    p = parse_policy(policy("p", WAVES_OK))
    assert p.guard is not None and p.guard.waves is not None and p.guard.gates is not None
    w = p.guard.waves
    assert (w.canary, w.group_by, w.order, w.max_unavailable, w.bake_seconds, w.approval) == (
        "1%",
        "topology.kubernetes.io/zone",
        ("us-east-1a", "us-east-1b"),
        1,
        600,
        Approval.MANUAL,
    )
    assert p.guard.gates.apiserver is not None
    assert p.guard.gates.apiserver.max_request_rate_increase == "50%"
    assert p.guard.gates.prometheus[0].max == 0.5 and p.guard.gates.prometheus[0].min is None
    assert p.rollout is not None and p.rollout.min_ready_seconds == 30
    steps = parse_policy(policy("p", {"guard": {"waves": {"steps": ["10%", "50%", "100%"]}}}))
    assert steps.guard is not None and steps.guard.waves is not None
    assert steps.guard.waves.steps == ("10%", "50%", "100%") and steps.guard.waves.approval is Approval.AUTO


@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        ({"waves": {"canary": {"nodes": 0}}}, "spec.guard.waves.canary.nodes", "must be at least 1"),
        ({"waves": {"canary": {}}}, "spec.guard.waves.canary.nodes", "is required"),
        ({"waves": {"canary": {"nodes": "150%"}}}, "spec.guard.waves.canary.nodes", "over 100%"),
        ({"waves": {"groupBy": "a b"}}, "spec.guard.waves.groupBy", "not a node label key"),
        ({"waves": {"order": ["a"]}}, "spec.guard.waves.order", "applies only with groupBy"),
        ({"waves": {"groupBy": "z", "order": ["a", "a"]}}, "spec.guard.waves.order[1]", "listed twice"),
        ({"waves": {"steps": ["50%", "40%", "100%"]}}, "spec.guard.waves.steps[1]", "over the step before"),
        ({"waves": {"steps": ["10%", "50%"]}}, "spec.guard.waves.steps", 'must be "100%"'),
        ({"waves": {"steps": [10, "100%"]}}, "spec.guard.waves.steps[0]", "must be a percentage"),
        ({"waves": {"steps": ["100%"], "groupBy": "z"}}, "spec.guard.waves.steps", "not both"),
        ({"waves": {"bakeSeconds": -1}}, "spec.guard.waves.bakeSeconds", "integer >= 0"),
        ({"waves": {"bakeSeconds": True}}, "spec.guard.waves.bakeSeconds", "integer >= 0"),
        ({"waves": {"approval": "Later"}}, "spec.guard.waves.approval", "not one of Auto, Manual"),
        ({"waves": {"maxUnavailable": 0}}, "spec.guard.waves.maxUnavailable", "must be at least 1"),
        ({"waves": {"bake": 5}}, "spec.guard.waves.bake", "unknown field"),
        ({"waves": {"alertOnCompletion": "yes"}}, "spec.guard.waves.alertOnCompletion", "true or false"),
        (
            {"gates": {"apiserver": {"maxRequestRateIncrease": 50}}},
            "spec.guard.gates.apiserver.maxRequestRateIncrease",
            'like "50%"',
        ),
        (
            {"gates": {"prometheus": [{"url": "prometheus:9090", "query": "q", "max": 1}]}},
            "spec.guard.gates.prometheus[0].url",
            "http:// or https://",
        ),
        (
            {"gates": {"prometheus": [{"url": "http://p", "query": "q"}]}},
            "spec.guard.gates.prometheus[0]",
            "give max, min or both",
        ),
        (
            {"gates": {"prometheus": [{"url": "http://p", "query": "q", "max": "high"}]}},
            "spec.guard.gates.prometheus[0].max",
            "must be a number",
        ),
        (
            {"gates": {"prometheus": [{"url": "http://p", "query": "q", "max": 1, "min": 2}]}},
            "spec.guard.gates.prometheus[0].min",
            "over max",
        ),
    ],
)
def test_waves_and_gates_errors(section: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_policy(policy("p", {"guard": section}))
    text = str(e.value)
    assert f"{field}: " in text and message in text, text


def test_min_ready_seconds_must_be_a_non_negative_integer() -> None:
    with pytest.raises(InvalidSpec, match=r"spec.rollout.minReadySeconds: -5 must be an integer >= 0"):
        parse_policy(policy("p", {"rollout": {"minReadySeconds": -5}}))


# --- spec.guard.alerts: the one place the rules on alert sinks are checked ----------------------

SLACK_TOKEN = "T0SECRET/B0SECRET/xoxSECRETtoken42"  # the credential part of a Slack webhook URL
REF = {"namespace": "dsguard", "name": "alerts", "key": "url"}


def alerts_of(*specs: Any) -> tuple[AlertSink, ...]:
    parsed = parse_policy(policy("p", {"guard": {"alerts": list(specs)}}))
    assert parsed.guard is not None
    return parsed.guard.alerts


def test_alert_sinks_report_every_error_with_its_path() -> None:
    with pytest.raises(InvalidSpec) as err:
        alerts_of(
            {"type": "Slack"},
            {"type": "Webhook", "hmacSecretRef": {"namespace": "dsguard", "name": "h"}},
            {"type": "Pager", "url": "https://x"},
            {"type": "Alertmanager", "url": "ftp://am"},
            {"type": "Slack", "url": f"https://hooks.slack.com/services/{SLACK_TOKEN}", "urlSecretRef": {}},
            {"type": "Alertmanager", "url": "http://am:9093", "hmacSecretRef": {}, "extra": 1},
        )
    assert [str(e) for e in err.value.errors] == [
        "spec.guard.alerts[0].urlSecretRef: is required for Slack (the Secret key holding the webhook URL)",
        "spec.guard.alerts[1].url: is required for Webhook (or urlSecretRef)",
        "spec.guard.alerts[1].hmacSecretRef.key: must be a non-empty string",
        "spec.guard.alerts[2].type: 'Pager' is not one of Slack, Webhook, Alertmanager",
        "spec.guard.alerts[3].url: must be an http:// or https:// URL; fix: e.g. https://alerts.example.com/dsguard",
        "spec.guard.alerts[4].url: a Slack webhook URL is a credential: put it in a Secret and use "
        "urlSecretRef",
        "spec.guard.alerts[4].urlSecretRef.namespace: must be a non-empty string",
        "spec.guard.alerts[4].urlSecretRef.name: must be a non-empty string",
        "spec.guard.alerts[4].urlSecretRef.key: must be a non-empty string",
        "spec.guard.alerts[4].urlSecretRef: give url or urlSecretRef, not both",
        "spec.guard.alerts[5].extra: unknown field; expected one of hmacSecretRef, type, url, urlSecretRef",
        "spec.guard.alerts[5].hmacSecretRef.namespace: must be a non-empty string",
        "spec.guard.alerts[5].hmacSecretRef.name: must be a non-empty string",
        "spec.guard.alerts[5].hmacSecretRef.key: must be a non-empty string",
        "spec.guard.alerts[5].hmacSecretRef: applies only to type Webhook",
    ]
    assert SLACK_TOKEN not in str(err.value)


@pytest.mark.parametrize(
    ("alert", "expected"),
    [
        # secrets only from Secrets: a Slack webhook URL is one, so is a URL with user info
        (
            {"type": "Slack", "url": f"https://hooks.slack.com/services/{SLACK_TOKEN}"},
            "url: a Slack webhook URL is a credential: put it in a Secret and use urlSecretRef",
        ),
        (
            {"type": "Webhook", "url": "https://dsguard:pa55SECRETword@alerts.example.com/hook"},
            "url: carries user info before '@' (a credential); fix: put the whole URL in a Secret "
            "and use urlSecretRef instead of url",
        ),
        (
            {"type": "Alertmanager", "url": "http://token-SECRET@am:9093"},
            "url: carries user info before '@' (a credential)",
        ),
        (
            {"type": "Webhook", "url": "https://", "hmacSecretRef": REF},
            "url: has no host; fix: e.g. https://",
        ),
        ({"type": "Webhook", "url": "https:///hook"}, "url: has no host"),
        ({"type": "Alertmanager", "url": "https://?x=SECRET"}, "url: has no host"),
        ({"type": "Webhook", "url": "HTTPS://alerts.example.com"}, "url: must be an http:// or https:// URL"),
        ({"type": "Webhook", "url": "alerts.example.com/hook"}, "url: must be an http:// or https:// URL"),
        ({"type": "Webhook", "url": "https:// alerts.example.com"}, "url: must not contain whitespace"),
        ({"type": "Webhook", "url": "https://alerts.example.com/a b"}, "url: must not contain whitespace"),
        ({"type": "Webhook", "url": "https://alerts.example.com\n"}, "url: must not contain whitespace"),
        ({"type": "Webhook", "url": 8080}, "url: must be a non-empty string"),
        ({"type": "Webhook", "url": ""}, "url: must be a non-empty string"),
        # where the URL comes from
        ({"type": "Slack"}, "urlSecretRef: is required for Slack"),
        ({"type": "Slack", "url": None}, "urlSecretRef: is required for Slack"),  # null: absent
        ({"type": "Alertmanager"}, "url: is required for Alertmanager (or urlSecretRef)"),
        ({"type": "Webhook", "urlSecretRef": None}, "url: is required for Webhook (or urlSecretRef)"),
        ({"type": "Webhook", "url": "https://a.example", "urlSecretRef": REF}, "urlSecretRef: give url or"),
        ({"type": "Webhook", "urlSecretRef": "dsguard/alerts"}, "urlSecretRef: must be a mapping, got str"),
        ({"type": "Webhook", "urlSecretRef": {**REF, "key": ""}}, "urlSecretRef.key: must be a non-empty"),
        ({"type": "Webhook", "urlSecretRef": {**REF, "optional": True}}, "urlSecretRef.optional: unknown"),
        # the signing key: from a Secret, for Webhook only
        ({"type": "Slack", "urlSecretRef": REF, "hmacSecretRef": REF}, "hmacSecretRef: applies only to"),
        ({"type": "Webhook", "url": "https://a.example", "hmac": "key"}, "hmac: unknown field"),
        # the entry itself
        ({"url": "https://a.example"}, "type: is required: one of Slack, Webhook, Alertmanager"),
        ({"type": "slack", "urlSecretRef": REF}, "type: 'slack' is not one of Slack, Webhook, Alertmanager"),
        (None, "spec.guard.alerts[0]: must be a mapping with type and url or urlSecretRef"),
        ("https://a.example", "spec.guard.alerts[0]: must be a mapping, got str"),
    ],
)
def test_alert_sink_rejections(alert: Any, expected: str) -> None:
    """Each rule, with the field it names; the value of a URL is never repeated (it may be a secret)."""
    with pytest.raises(InvalidSpec) as err:
        alerts_of(alert)
    message = str(err.value)
    assert message.startswith("DaemonSetPolicy/p: spec.guard.alerts[0]")
    assert expected in message
    url = alert.get("url") if isinstance(alert, dict) else None
    said = message.replace("e.g. https://alerts.example.com/dsguard", "")  # the example in a fix
    assert "SECRET" not in said
    assert not isinstance(url, str) or not url.strip() or url.strip() not in said


@pytest.mark.parametrize(
    ("alert", "expected"),
    [
        ({"type": "Slack", "urlSecretRef": REF}, AlertSink(AlertType.SLACK, url_secret_ref=SecretRef(**REF))),
        (
            {
                "type": "Webhook",
                "url": "https://alerts.example.com/dsguard?team=infra#x",
                "hmacSecretRef": REF,
            },
            AlertSink(
                AlertType.WEBHOOK,
                url="https://alerts.example.com/dsguard?team=infra#x",
                hmac_secret_ref=SecretRef(**REF),
            ),
        ),
        (
            {"type": "Webhook", "urlSecretRef": REF, "hmacSecretRef": {**REF, "key": "hmac"}},
            AlertSink(
                AlertType.WEBHOOK,
                url_secret_ref=SecretRef(**REF),
                hmac_secret_ref=SecretRef("dsguard", "alerts", "hmac"),
            ),
        ),
        (
            {"type": "Alertmanager", "url": "http://[fd00::1]:9093"},
            AlertSink(AlertType.ALERTMANAGER, url="http://[fd00::1]:9093"),
        ),
        (
            {"type": "Alertmanager", "url": "http://am.monitoring:9093/", "hmacSecretRef": None},
            AlertSink(AlertType.ALERTMANAGER, url="http://am.monitoring:9093/"),
        ),
        (
            {"type": "Webhook", "url": "https://alerts.example.com/to/@oncall"},  # '@' past the host
            AlertSink(AlertType.WEBHOOK, url="https://alerts.example.com/to/@oncall"),
        ),
    ],
)
def test_alert_sinks_accepted(alert: dict[str, Any], expected: AlertSink) -> None:
    assert alerts_of(alert) == (expected,)


@pytest.mark.parametrize(
    "url",
    [
        "https://alerts.example.com",
        "http://am:9093",
        "https://alerts.example.com/a/b?c=d#e",
        "http://[fd00::1]:9093/",
        "https://alerts.example.com/to/@oncall",
        "https://",
        "https:///x",
        "https://?q",
        "https://#f",
        "https://user:pw@host",
        "https://user@host/x",
        "https://host@",
        "http://host /x",
        "http://host/x\n",
        "http://host/\tx",
        "\nhttp://host",
        "ftp://host",
        "HTTP://host",
        "http:/host",
        "host",
    ],
)
def test_crd_url_pattern_agrees_with_the_parser(url: str) -> None:
    """The apiserver checks an inline url with the CRD's pattern (RE2, whole string); the guard
    and `dsguard check` with the parser. Slack's url is refused by the CRD's rules anyway."""
    import re

    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    item = spec["guard"]["properties"]["alerts"]["items"]
    assert item["properties"]["url"]["pattern"] == INLINE_URL_PATTERN
    schema_ok = re.fullmatch(item["properties"]["url"]["pattern"], url) is not None
    try:
        alerts_of({"type": "Webhook", "url": url})
        parser_ok = True
    except InvalidSpec:
        parser_ok = False
    assert schema_ok == parser_ok


def test_crd_alert_rules_are_the_parsers() -> None:
    """The CRD says the same as the parser about which fields an alert sink has and needs."""
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    item = spec["guard"]["properties"]["alerts"]["items"]
    assert set(item["properties"]) == {"type", "url", "urlSecretRef", "hmacSecretRef"}
    assert item["required"] == ["type"]
    assert item["properties"]["type"]["enum"] == [t.value for t in AlertType]
    ref = item["properties"]["urlSecretRef"]
    assert ref == item["properties"]["hmacSecretRef"]
    assert ref["required"] == ["namespace", "name", "key"]
    assert all(ref["properties"][f]["minLength"] == 1 for f in ("namespace", "name", "key"))
    rules = [v["rule"] for v in item["x-kubernetes-validations"]]
    assert rules == [
        "self.type != 'Slack' || (has(self.urlSecretRef) && !has(self.url))",
        "self.type == 'Slack' || has(self.url) || has(self.urlSecretRef)",
        "!(has(self.url) && has(self.urlSecretRef))",
        "!has(self.hmacSecretRef) || self.type == 'Webhook'",
    ]
