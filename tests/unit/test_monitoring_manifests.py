"""The shipped alert rules and Grafana dashboard (manifests/helm/dsguard/files/), without a cluster:
the kustomize component carries the same, the dashboard is well formed, and every dsguard metric
they read is one the webhook or the guard declares (tests/cluster/test_monitoring.py checks the
running processes export them, and promtool checks and unit-tests the rules)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from guard.metrics import GuardMetrics
from guard.notify.dispatch import delivery_counter
from tests.support.monitoring import COMPONENT, DASHBOARD, RULES, component_files
from webhook.metrics import Metrics

#: Not dsguard's: the apiserver's count of admissions that skipped a failurePolicy Ignore webhook.
APISERVER = {"apiserver_admission_webhook_fail_open_count"}
_NAME = re.compile(r"\b(?:dsguard|apiserver)_[a-z0-9_]+\b")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> dict[str, str]:
    return {
        f"{p['title']} [{t['refId']}]": t["expr"]
        for p in dashboard()["panels"]
        for t in p.get("targets") or ()
    }


def declared_families() -> set[str]:
    families: set[str] = set()
    dispatch = CollectorRegistry()
    delivery_counter(dispatch)
    for registry in (Metrics().registry, GuardMetrics().registry, dispatch):
        families |= {m.name for m in registry.collect()}
    return families


def family(name: str, known: set[str]) -> str | None:
    """The metric family a name in PromQL belongs to (a histogram's _bucket, a counter's _total)."""
    candidates = [name] + [name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)]
    return next((c for c in candidates if c in known), None)


def test_component_is_the_chart_files() -> None:
    for path, text in component_files().items():
        assert path.read_text() == text, (
            f"{path.name} is out of date: run `.venv/bin/python -m tests.support.monitoring`"
        )
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["dsguard.json=grafana-dashboard.json"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_read_is_declared(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    known = declared_families()
    unknown = {
        f"{where}: {name}"
        for where, expr in exprs.items()
        for name in _NAME.findall(expr)
        if name not in APISERVER and family(name, known) is None
    }
    assert not unknown, f"metrics no dsguard component declares: {sorted(unknown)}"


def test_every_alert_has_a_severity_a_summary_and_a_promtool_case() -> None:
    doc = yaml.safe_load(RULES.read_text())
    tests = (RULES.parents[4] / "tests" / "monitoring" / "alerts_test.yaml").read_text()
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            fires = re.search(rf"alertname: {rule['alert']}\n\s+exp_alerts:\n\s+- exp_labels", tests)
            quiet = re.search(rf"alertname: {rule['alert']}\n\s+exp_alerts: \[\]", tests)
            assert fires and quiet, f"{rule['alert']}: a promtool case that fires and one that doesn't"


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] == "dsguard" and d["title"] == "dsguard"
    (var,) = d["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["Webhook", "Rollout guard", "Background audit"]
    occupied: set[tuple[int, int]] = set()
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        cells = {(pos["x"] + i, pos["y"] + j) for i in range(pos["w"]) for j in range(pos["h"])}
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and p["description"], p["title"]
