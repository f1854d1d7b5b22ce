"""The apiserver (the CRD's schema and rules) and dsguard's policy parser accept the same alert
sinks: `kubectl apply` refuses what `dsguard check` and the guard would (docs/policy.md, guard.alerts)."""

from __future__ import annotations

import json
from typing import Any

from dsguard.fielderrors import InvalidSpec
from dsguard.policy import parse_policy
from localcluster.cluster import LocalCluster

REF = {"namespace": "dsguard", "name": "alerts", "key": "url"}
ALERTS: list[Any] = [
    {"type": "Slack", "urlSecretRef": REF},
    {"type": "Slack", "url": "https://hooks.slack.com/services/T0/B0/x"},
    {"type": "Slack", "url": "https://hooks.slack.com/services/T0/B0/x", "urlSecretRef": REF},
    {"type": "Slack"},
    {"type": "Slack", "urlSecretRef": REF, "hmacSecretRef": REF},
    {"type": "Webhook", "url": "https://alerts.example.com/dsguard?team=infra#x", "hmacSecretRef": REF},
    {"type": "Webhook", "urlSecretRef": REF, "hmacSecretRef": REF},
    {"type": "Webhook", "url": "https://alerts.example.com/to/@oncall"},
    {"type": "Webhook", "url": "https://dsguard:password@alerts.example.com/hook"},
    {"type": "Webhook", "url": "https://token@alerts.example.com"},
    {"type": "Webhook", "url": "https://"},
    {"type": "Webhook", "url": "https:///hook"},
    {"type": "Webhook", "url": "https://?q=1"},
    {"type": "Webhook", "url": "https://alerts.example.com/a b"},
    {"type": "Webhook", "url": "https://alerts.example.com\n"},
    {"type": "Webhook", "url": "https://alerts.example.com\tx"},
    {"type": "Webhook", "url": "HTTPS://alerts.example.com"},
    {"type": "Webhook", "url": "ftp://alerts.example.com"},
    {"type": "Webhook", "url": ""},
    {"type": "Webhook"},
    {"type": "Webhook", "url": "https://a.example", "urlSecretRef": REF},
    {"type": "Webhook", "urlSecretRef": {**REF, "key": ""}},
    {"type": "Webhook", "urlSecretRef": {"namespace": "dsguard", "name": "alerts"}},
    {"type": "Alertmanager", "url": "http://[fd00::1]:9093/"},
    {"type": "Alertmanager", "url": "http://am.monitoring:9093", "hmacSecretRef": REF},
    {"type": "Alertmanager", "urlSecretRef": REF},
    {"type": "Alertmanager", "url": "http://am:9093", "urlSecretRef": None},  # null: pruned
    {"type": "Pager", "url": "https://a.example"},
    {"url": "https://a.example"},
    None,
    "https://a.example",
]


def policy(name: str, alert: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dsguard.io/v1alpha1",
        "kind": "DaemonSetPolicy",
        "metadata": {"name": name},
        "spec": {"match": {"namespaces": ["nowhere"]}, "guard": {"alerts": [alert]}},
    }


def test_the_crd_and_the_parser_accept_the_same_alert_sinks(cluster: LocalCluster, crd: str) -> None:
    disagree = []
    for i, alert in enumerate(ALERTS):
        doc = policy(f"alert-sink-{i}", alert)
        try:
            parse_policy(doc)
            parser = "accepts"
        except InvalidSpec:
            parser = "refuses"
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(doc), check=False
        )
        apiserver = "accepts" if proc.returncode == 0 else "refuses"
        if parser != apiserver:
            disagree.append(
                f"{alert!r}: the parser {parser}, the apiserver {apiserver}: {proc.stderr.strip()}"
            )
    assert disagree == []
