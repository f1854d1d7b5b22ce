"""The shipped alert rules and dashboard against the real thing:

* `promtool check rules` and `promtool test rules` (a case that fires and one that doesn't per
  alert, tests/monitoring/alerts_test.yaml) with the promtool built from Go modules at the pinned
  Prometheus version (localcluster/gobuild/build_prometheus.sh, cached);
* every dashboard query is valid PromQL (promtool checks it as a recording rule);
* every dsguard metric the rules and the dashboard read is exported by a running webhook or guard
  (host-run against the local control plane, scraped), so a renamed metric fails here;
* a real Prometheus scraping a host-run guard evaluates the no-leader alert's expression to
  nothing while the guard leads, and to a firing sample once it is gone (its series go stale);
* the apiserver metric the fail-open alert reads exists with the labels the rule selects: a
  webhook configuration with dsguard's webhook names, failurePolicy Ignore and nobody listening,
  scoped to the test namespace, lets a DaemonSet through, and the apiserver counts it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster
from localcluster.guard_host import HostGuard
from localcluster.procs import free_port
from localcluster.prometheus import LocalPrometheus, prometheus_binary
from localcluster.webhook_host import HostWebhook, loopback_tls_files, webhook_configurations
from tests.support import builders
from tests.support.kubectl import apply
from tests.support.monitoring import DASHBOARD, RULES
from tests.support.polling import poll

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
ALERT_TESTS = REPO / "tests" / "monitoring" / "alerts_test.yaml"
_NAME = re.compile(r"\b(?:dsguard|apiserver)_[a-z0-9_]+\b")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
FAIL_OPEN = "apiserver_admission_webhook_fail_open_count"


@pytest.fixture(scope="module")
def promtool() -> Path:
    return prometheus_binary().parent / "promtool"


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets") or ()]


def names_read() -> set[str]:
    return {n for e in rule_exprs() + dashboard_exprs() for n in _NAME.findall(e)}


def families(exposition: str) -> set[str]:
    """Metric family names, samples or not (a labelled counter nobody incremented yet still has
    its HELP and TYPE)."""
    return {f.name for f in text_string_to_metric_families(exposition)}


def family(name: str, known: set[str]) -> str | None:
    candidates = [name] + [name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)]
    return next((c for c in candidates if c in known), None)


def test_promtool_checks_and_unit_tests_the_rules(promtool: Path) -> None:
    checked = run([str(promtool), "check", "rules", str(RULES)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in checked.stdout, checked.stdout
    tested = run([str(promtool), "test", "rules", str(ALERT_TESTS)])
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout, tested.stdout


def test_dashboard_queries_are_promql(promtool: Path, tmp_path: Path) -> None:
    # Grafana's $__rate_interval is not PromQL; what it stands for is.
    rules = [
        {"record": f"dsguard:dashboard_query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run([str(promtool), "check", "rules", str(path)])
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def policy_name(cluster: LocalCluster, crd: str, namespace: str) -> Iterator[str]:
    yield namespace
    cluster.kubectl("delete", "daemonsetpolicy", namespace, "--ignore-not-found", check=False)


def test_running_components_export_every_metric_read(
    cluster: LocalCluster, crd: str, namespace: str, policy_name: str, tmp_path: Path
) -> None:
    apply(
        cluster, builders.policy(policy_name, {"match": {"namespaces": [namespace]}, "enforcement": "Audit"})
    )
    with (
        HostWebhook(
            cluster, workdir=tmp_path / "webhook",
            namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        ) as webhook,
        HostGuard(cluster, lease_name=f"monitoring-{namespace}"[:60], tick=0.2) as guard,
    ):  # fmt: skip
        # The audit has run (its per-policy gauge and histogram exist), the leader says so.
        poll(lambda: guard.metric("dsguard_audit_runs_total") >= 1, what="the guard's first audit")
        poll(lambda: guard.metric("dsguard_guard_leader") == 1, what="the guard leading")
        exported = families(webhook.metrics()) | families(guard.metrics_text())
    missing = sorted(n for n in names_read() - {FAIL_OPEN} if family(n, exported) is None)
    assert not missing, f"read by the rules or the dashboard, exported by nobody: {missing}"


def alert_expr(name: str) -> str:
    doc = yaml.safe_load(RULES.read_text())
    (expr,) = [r["expr"] for g in doc["groups"] for r in g["rules"] if r.get("alert") == name]
    return str(expr)


def test_no_leader_alert_on_a_real_guard(
    cluster: LocalCluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    expr = alert_expr("DsguardGuardNoLeader")
    guard = HostGuard(cluster, lease_name=f"noleader-{namespace}"[:60], tick=0.2)
    guard.start()
    try:
        with LocalPrometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{guard.port}"]) as prom:
            poll(
                lambda: prom.query("sum(dsguard_guard_leader)")["result"],
                what="Prometheus scraping the guard",
            )
            poll(
                lambda: prom.query("sum(dsguard_guard_leader)")["result"][0]["value"][1] == "1",
                what="the guard leading, as Prometheus sees it",
            )
            assert prom.query(expr)["result"] == [], "no alert while a guard leads"
            guard.kill()  # the failed scrape marks its series stale: no leader left
            firing = poll(lambda: prom.query(expr)["result"], what="the no-leader expression to fire")
            assert firing[0]["value"][1] == "0", firing
    finally:
        guard.stop()


def test_the_apiserver_counts_fail_open_under_dsguards_webhook_names(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    (selector,) = {m for e in rule_exprs() for m in re.findall(rf'{FAIL_OPEN}\{{name=~"([^"]+)"\}}', e)}
    pattern = re.compile(selector.replace("\\\\", "\\"))
    _, ca = loopback_tls_files(tmp_path)
    nobody = f"https://127.0.0.1:{free_port()}"  # nothing listens: every call fails
    docs: list[dict[str, Any]] = webhook_configurations(
        nobody, ca, failure_policy="Ignore", timeout_seconds=2,
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    )  # fmt: skip
    for d in docs:
        d["metadata"]["name"] = f"{d['metadata']['name']}-{namespace}"[:63]
    names = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in docs]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    try:
        # The configurations take effect within a moment: apply until the apiserver counts one.
        def admitted_unchecked() -> float:
            apply(
                cluster, builders.daemonset("agent", namespace, image=f"registry.example.com/agent:{uuid4()}")
            )
            return fail_open_counts(cluster).get(("validate.dsguard.io", "validating"), 0)

        poll(admitted_unchecked, interval=1, what="the apiserver to count a fail-open admission")
    finally:
        cluster.kubectl("delete", *names, "--ignore-not-found", check=False)
    counts = fail_open_counts(cluster)
    for name, type_ in (("validate.dsguard.io", "validating"), ("mutate.dsguard.io", "admit")):
        assert counts.get((name, type_), 0) > 0, counts
        assert pattern.fullmatch(name), (selector, name)


def fail_open_counts(cluster: LocalCluster) -> dict[tuple[str, str], float]:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.removesuffix("_total") == FAIL_OPEN:  # the parser names counter samples *_total
                out[(s.labels.get("name", ""), s.labels.get("type", ""))] = s.value
    return out
