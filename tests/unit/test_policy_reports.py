"""Policy reports: the pure report builder (dsguard.policy_reports) and the writer that keeps one
report per namespace in step with the audit (guard.policy_reports), over a fake report store."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.facts import ClusterFacts
from dsguard.policy_reports import (
    FAIL,
    MAX_RESULT_BYTES,
    OPENREPORTS,
    PASS,
    REPORT_NAME,
    UNLISTED_ANNOTATION,
    WARN,
    WGPOLICY,
    RuleResult,
    build_report,
    configured_rules,
    daemonset_results,
    report_changed,
)
from dsguard.rules.engine import findings_by_policy
from guard.metrics import GuardMetrics
from guard.policy_audit import audit
from guard.policy_reports import PolicyReportWriter
from tests.support.builders import daemonset, node_info, parsed_policy

AGENT = "registry.example.com/agent"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
T0 = datetime(2030, 1, 1, tzinfo=UTC)
ds = partial(daemonset, namespace="logging", image=f"{AGENT}:2.1.0", app_label=True)
FACTS = ClusterFacts(
    nodes=(node_info("old", kubelet="v1.32.5"), node_info("new", kubelet="v1.33.2")), server_version="v1.33.2"
)
REQUIRE_INFRA: dict[str, Any] = {"match": {"namespaces": ["logging"]}, "tolerations": {"required": [INFRA]}}
VERSIONS: dict[str, Any] = {
    "match": {"namespaces": ["logging"]},
    "enforcement": "Audit",
    "versions": {
        "rules": [{"image": AGENT, "compatibility": [{"kubernetes": ">=1.33.0", "versions": ">=2.0.0"}]}],
        "unknownVersion": "Warn",
    },
}


def results_for(obj: Mapping[str, Any], *specs: tuple[str, dict[str, Any]]) -> set[tuple[str, str, str]]:
    policies = [parsed_policy(n, s) for n, s in specs]
    return {
        (r.policy, r.rule, r.result)
        for r in daemonset_results(obj, findings_by_policy(policies, obj, facts=FACTS))
    }


# -- daemonset_results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    policies: tuple[tuple[str, dict[str, Any]], ...]
    expected: set[tuple[str, str, str]]  # (policy, rule, result)


CASES = [
    Case("missing toleration fails", ds(), (("infra", REQUIRE_INFRA),), {("infra", "tolerations", FAIL)}),
    Case("toleration present passes", ds(tolerations=[INFRA]), (("infra", REQUIRE_INFRA),),
         {("infra", "tolerations", PASS)}),
    Case("image too old for a kubelet fails", ds(image=f"{AGENT}:1.9.0"), (("versions", VERSIONS),),
         {("versions", "versions", FAIL)}),
    Case("compatible image passes", ds(image=f"{AGENT}:2.0.0"), (("versions", VERSIONS),),
         {("versions", "versions", PASS)}),
    Case("untagged image under unknownVersion Warn warns", ds(image=AGENT), (("versions", VERSIONS),),
         {("versions", "versions", WARN)}),
    Case("one result per policy and configured rule", ds(image=f"{AGENT}:1.0.0"),
         (("infra", REQUIRE_INFRA), ("versions", VERSIONS)),
         {("infra", "tolerations", FAIL), ("versions", "versions", FAIL)}),
    Case("coverage is its own rule", ds(tolerations=[INFRA]),
         (("cover", {"tolerations": {"required": [INFRA], "coverage": {"nodeSelector": {}}}}),),
         {("cover", "tolerations", PASS), ("cover", "coverage", PASS)}),
    Case("rollout caps", ds(max_unavailable=3), (("caps", {"rollout": {"maxUnavailable": 1}}),),
         {("caps", "rollout", FAIL)}),
    Case("a policy that doesn't match gives nothing", ds(namespace="other"), (("infra", REQUIRE_INFRA),),
         set()),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_daemonset_results(case: Case) -> None:
    assert results_for(case.obj, *case.policies) == case.expected


def test_configured_rules_follow_the_policy_sections() -> None:
    assert configured_rules(parsed_policy("p", {})) == ()
    both = {
        "tolerations": {"required": [INFRA], "coverage": {"nodeSelector": {}}},
        "rollout": {"maxSurge": 1},
    }
    assert configured_rules(parsed_policy("p", both)) == ("tolerations", "coverage", "rollout")


def test_a_result_names_the_daemonset_the_policy_and_the_enforcement() -> None:
    obj = ds(image=f"{AGENT}:1.9.0")
    obj["metadata"]["uid"] = "u-1"
    (r,) = daemonset_results(obj, findings_by_policy([parsed_policy("versions", VERSIONS)], obj, facts=FACTS))
    assert (r.namespace, r.name, r.uid, r.enforcement) == ("logging", "agent", "u-1", "Audit")
    assert "new" in r.message and "v1.33.2" in r.message


# -- build_report ----------------------------------------------------------------------------------


def rr(
    name: str, result: str, *, policy: str = "p", rule: str = "versions", message: str = "m"
) -> RuleResult:
    return RuleResult(
        "logging", name, policy, rule, result, message, uid=f"uid-{name}", enforcement="Enforce"
    )


def test_report_shape_openreports() -> None:
    body = build_report(OPENREPORTS, "logging", [rr("a", FAIL), rr("b", PASS)], previous=None, now=T0)
    assert body["apiVersion"] == "openreports.io/v1alpha1" and body["kind"] == "Report"
    assert body["metadata"] == {
        "name": REPORT_NAME, "namespace": "logging", "labels": {"app.kubernetes.io/managed-by": "dsguard"}
    }  # fmt: skip
    assert body["source"] == "dsguard"
    assert body["summary"] == {"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0}
    fail = body["results"][0]
    assert fail == {
        "source": "dsguard", "policy": "p", "rule": "versions", "category": "DaemonSet guardrails",
        "severity": "high", "result": "fail", "scored": True, "message": "m",
        "resources": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "namespace": "logging", "name": "a",
                       "uid": "uid-a"}],
        "timestamp": {"seconds": int(T0.timestamp()), "nanos": 0},
        "properties": {"enforcement": "Enforce"},
    }  # fmt: skip


def test_report_shape_wgpolicy_has_no_report_level_source() -> None:
    body = build_report(WGPOLICY, "logging", [rr("a", WARN)], previous=None, now=T0)
    assert (body["apiVersion"], body["kind"]) == ("wgpolicyk8s.io/v1alpha2", "PolicyReport")
    assert "source" not in body and "configuration" not in body
    assert body["results"][0]["severity"] == "low" and body["results"][0]["scored"] is False


@pytest.mark.parametrize(
    ("results", "cap", "listed", "unlisted"),
    [
        ([rr(f"ds{i}", PASS) for i in range(5)], 10, 5, 0),
        ([rr(f"ds{i}", PASS) for i in range(5)] + [rr("bad", FAIL), rr("meh", WARN)], 3, 3, 4),
        ([rr(f"ds{i}", FAIL) for i in range(1000)], 500, 500, 500),
    ],
    ids=["under the cap", "over: fail and warn first", "a big namespace"],
)
def test_report_is_bounded_and_counts_everything(
    results: list[RuleResult], cap: int, listed: int, unlisted: int
) -> None:
    body = build_report(OPENREPORTS, "logging", results, previous=None, now=T0, max_results=cap)
    assert len(body["results"]) == listed
    assert sum(body["summary"].values()) == len(results)
    assert body["configuration"] == {"limits": {"maxResults": cap}}
    assert (body["metadata"].get("annotations") or {}).get(UNLISTED_ANNOTATION) == (
        str(unlisted) if unlisted else None
    )
    order = {FAIL: 0, WARN: 1, PASS: 2}
    ranks = [order[r["result"]] for r in body["results"]]
    assert ranks == sorted(ranks)
    if unlisted and any(r.result != PASS for r in results):
        assert body["results"][0]["result"] == FAIL


def test_report_stays_under_the_object_size_limit_whatever_the_count() -> None:
    long = [rr(f"daemonset-{i:04d}", FAIL, message="x" * 1024) for i in range(1000)]
    body = build_report(OPENREPORTS, "logging", long, previous=None, now=T0, max_results=1000)
    assert len(orjson.dumps(body)) <= MAX_RESULT_BYTES + 4096  # etcd takes 1.5 MiB
    assert 500 < len(body["results"]) < 1000
    assert int(body["metadata"]["annotations"][UNLISTED_ANNOTATION]) == 1000 - len(body["results"])
    assert body["summary"]["fail"] == 1000


def test_unchanged_results_keep_their_timestamp_so_the_report_is_identical() -> None:
    first = build_report(OPENREPORTS, "logging", [rr("a", FAIL), rr("b", PASS)], previous=None, now=T0)
    later = T0 + timedelta(minutes=10)
    again = build_report(OPENREPORTS, "logging", [rr("b", PASS), rr("a", FAIL)], previous=first, now=later)
    assert again == first
    assert not report_changed(again, first)
    # a fix: that result is new (new timestamp), the other keeps its own
    fixed = build_report(OPENREPORTS, "logging", [rr("a", PASS), rr("b", PASS)], previous=first, now=later)
    assert report_changed(fixed, first)
    stamps = {r["resources"][0]["name"]: r["timestamp"]["seconds"] for r in fixed["results"]}
    assert stamps == {"a": int(later.timestamp()), "b": int(T0.timestamp())}


def test_report_changed_looks_only_at_what_dsguard_writes() -> None:
    body = build_report(OPENREPORTS, "logging", [rr("a", FAIL)], previous=None, now=T0)
    stored = {**body, "metadata": {**body["metadata"], "resourceVersion": "7", "uid": "x",
                                   "managedFields": [{}], "annotations": {"someone/else": "y"}}}  # fmt: skip
    assert not report_changed(body, stored)
    assert report_changed(body, None)
    assert report_changed(body, {**stored, "summary": {"pass": 0}})
    assert report_changed(body, {**stored, "metadata": {**stored["metadata"], "labels": {}}})


# -- the writer ------------------------------------------------------------------------------------


class FakeStore:
    def __init__(self, reports: Sequence[dict[str, Any]] = (), *, crd: bool = True) -> None:
        self.reports = {r["metadata"]["namespace"]: r for r in reports}
        self.crd = crd
        self.calls: list[tuple[str, str]] = []
        self.fail_apply: int | None = None

    async def list(self) -> list[dict[str, Any]]:
        self.calls.append(("list", ""))
        if not self.crd:
            raise ApiException(status=404, reason="Not Found")
        return list(self.reports.values())

    async def apply(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.calls.append(("apply", namespace))
        if self.fail_apply is not None:
            raise ApiException(status=self.fail_apply, reason="Forbidden")
        self.reports[namespace] = dict(body)

    async def delete(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", namespace))
        if namespace not in self.reports:
            raise ApiException(status=404, reason="Not Found")
        del self.reports[namespace]


POLICIES = [parsed_policy("infra", {"tolerations": {"required": [INFRA]}})]


def world(*objs: dict[str, Any]) -> list[dict[str, Any]]:
    return list(objs)


async def run_audit(writer: PolicyReportWriter, objs: list[dict[str, Any]]) -> bool:
    audit(POLICIES, objs, FACTS, on_judged=writer.judged)
    return await writer.sync({(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs})


def writer_for(store: FakeStore, now: datetime = T0, max_results: int = 500) -> PolicyReportWriter:
    return PolicyReportWriter(OPENREPORTS, store, GuardMetrics(), max_results=max_results, now=lambda: now)


async def test_writer_writes_per_namespace_then_nothing_while_nothing_changes() -> None:
    store = FakeStore()
    w = writer_for(store)
    objs = world(ds("a"), ds("b", tolerations=[INFRA]), ds("c", namespace="monitoring"))
    await run_audit(w, objs)
    assert sorted(store.calls) == [("apply", "logging"), ("apply", "monitoring"), ("list", "")]
    assert (
        store.reports["logging"]["summary"]["fail"] == 1 and store.reports["logging"]["summary"]["pass"] == 1
    )
    store.calls.clear()
    w.now = lambda: T0 + timedelta(hours=1)
    await run_audit(w, objs)
    assert store.calls == []  # no churn


async def test_writer_updates_on_a_fix_and_deletes_an_empty_namespace() -> None:
    store = FakeStore()
    w = writer_for(store)
    await run_audit(w, world(ds("a"), ds("c", namespace="monitoring")))
    store.calls.clear()
    await run_audit(w, world(ds("a", tolerations=[INFRA])))  # fixed; monitoring's DaemonSet deleted
    assert sorted(store.calls) == [("apply", "logging"), ("delete", "monitoring")]
    assert store.reports["logging"]["summary"]["fail"] == 0
    assert "monitoring" not in store.reports


async def test_a_restarted_guard_rewrites_nothing_and_removes_what_it_left_behind() -> None:
    first = FakeStore()
    await run_audit(writer_for(first), world(ds("a"), ds("c", namespace="monitoring")))
    store = FakeStore(list(first.reports.values()))
    w = writer_for(store, now=T0 + timedelta(hours=1))
    await run_audit(w, world(ds("a")))
    assert store.calls == [("list", ""), ("delete", "monitoring")]
    w.relist()  # leadership lost and won again
    store.calls.clear()
    await run_audit(w, world(ds("a")))
    assert store.calls == [("list", "")]


async def test_without_the_crd_the_writer_says_so_once_and_writes_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(crd=False)
    w = writer_for(store)
    with caplog.at_level(logging.WARNING, logger="dsguard.reports"):
        assert await run_audit(w, world(ds("a"))), "no quick retries: the next audit looks again"
        await run_audit(w, world(ds("a")))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "reports.openreports.io" in said[0] and "--policy-reports none" in said[0]
    store.crd = True
    await run_audit(w, world(ds("a")))
    assert ("apply", "logging") in store.calls and store.reports["logging"]["summary"]["fail"] == 1


async def test_the_crd_removed_under_the_writer_is_listed_for_again(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    w = writer_for(store)
    await run_audit(w, world(ds("a"), ds("c", namespace="monitoring")))
    store.fail_apply = 404  # the CRD is deleted: every write finds no such resource
    store.crd = False
    assert not await run_audit(
        w, world(ds("a", tolerations=[INFRA]), ds("c", namespace="monitoring", tolerations=[INFRA]))
    )
    with caplog.at_level(logging.WARNING, logger="dsguard.reports"):
        assert await run_audit(w, world(ds("a", tolerations=[INFRA])))
    assert "reports.openreports.io CRD is not installed" in caplog.text


async def test_a_refused_write_is_retried_at_the_next_audit(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    w = writer_for(store)
    store.fail_apply = 403
    with caplog.at_level(logging.ERROR, logger="dsguard.reports"):
        assert not await run_audit(w, world(ds("a"))), "the audit retries with its backoff"
    assert "needs list, create, patch and delete on reports.openreports.io" in caplog.text
    assert w.metrics.report_writes.labels("apply", "error")._value.get() == 1
    store.fail_apply = None
    assert await run_audit(w, world(ds("a")))
    assert store.reports["logging"]["summary"]["fail"] == 1
