"""Policy reports, pure part: the background audit's findings as the cross-engine report format
that Policy Reporter, Kyverno's tooling and other dashboards read.

Two formats with the same result shape: OpenReports (`openreports.io/v1alpha1` `Report`, the
current one: Kyverno >= 1.15 writes it with openreports.enabled) and the Policy WG's
`wgpolicyk8s.io/v1alpha2` `PolicyReport` it grew out of (what older Kyverno and Policy Reporter
read). One report per namespace that holds governed DaemonSets, named `dsguard-daemonsets`, with
one result per DaemonSet, policy and rule the policy configures: `fail` (a violation), `warn`
(only warnings, e.g. an untagged image under unknownVersion: Warn) or `pass`.

A report is bounded: at most `max_results` results, and 1 MiB of them, are listed (fail first,
then warn, then pass);
the summary counts all of them, and the report says how many are left out (the annotation
`dsguard.io/unlisted-results`, and OpenReports' `configuration.limits.maxResults`). A result keeps
the timestamp of when it was first seen as it is, so an unchanged cluster gives an identical
report, and the writer (guard/policy_reports.py) writes nothing. No I/O here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from dsguard.policy import Policy
from dsguard.rules.context import Finding, Severity

SOURCE = "dsguard"
CATEGORY = "DaemonSet guardrails"
REPORT_NAME = "dsguard-daemonsets"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dsguard"}
UNLISTED_ANNOTATION = "dsguard.io/unlisted-results"
# 500 results of at most ~1.4 KiB each (the message is clipped) stay well under etcd's 1.5 MiB
# object limit; whatever the count asked for, the listed results stop at MAX_RESULT_BYTES.
MAX_RESULTS = 500
MAX_MESSAGE = 1024
MAX_RESULT_BYTES = 1024 * 1024

PASS, FAIL, WARN = "pass", "fail", "warn"
_ORDER = {FAIL: 0, WARN: 1, PASS: 2}
# How bad a failed rule is for a DaemonSet: versions and coverage mean pods that crash or nodes
# left without the agent; a missing toleration or too fast a rollout is a risk, not yet an outage.
RULE_SEVERITY = {"versions": "high", "coverage": "high", "tolerations": "medium", "rollout": "medium"}
WARN_SEVERITY = "low"


@dataclass(frozen=True)
class ReportFormat:
    name: str  # the guard's --policy-reports value
    group: str
    version: str
    kind: str
    plural: str
    openreports: bool  # the report-level `source` and `configuration` fields exist

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}"


OPENREPORTS = ReportFormat("openreports", "openreports.io", "v1alpha1", "Report", "reports", True)
WGPOLICY = ReportFormat("wgpolicy", "wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports", False)
FORMATS = {f.name: f for f in (OPENREPORTS, WGPOLICY)}
NONE = "none"


@dataclass(frozen=True, order=True)
class RuleResult:
    """One DaemonSet judged by one rule of one policy."""

    namespace: str
    name: str
    policy: str
    rule: str
    result: str  # pass, fail, warn
    message: str
    uid: str = ""
    enforcement: str = ""

    def sort_key(self) -> tuple[int, str, str, str]:
        return _ORDER[self.result], self.name, self.policy, self.rule


def configured_rules(policy: Policy) -> tuple[str, ...]:
    """The rules a policy has a section for (each rule reads its own; see dsguard/rules)."""
    rules: list[str] = []
    if policy.tolerations is not None:
        rules.append("tolerations")
        if policy.tolerations.coverage is not None:
            rules.append("coverage")
    if policy.versions is not None:
        rules.append("versions")
    if policy.rollout is not None:
        rules.append("rollout")
    return tuple(rules)


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def daemonset_results(
    obj: Mapping[str, Any], judged: Sequence[tuple[Policy, Sequence[Finding]]]
) -> list[RuleResult]:
    """The results for one DaemonSet from what every matching policy found (the audit's
    findings_by_policy): every configured rule passes unless a finding says otherwise."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    uid = str(meta.get("uid") or "")
    out: list[RuleResult] = []
    for policy, findings in judged:
        by_rule: dict[str, list[Finding]] = {r: [] for r in configured_rules(policy)}
        for f in findings:
            by_rule.setdefault(f.rule, []).append(f)
        for rule, found in by_rule.items():
            violations = [f.message for f in found if f.severity is Severity.VIOLATION]
            warnings = [f.message for f in found if f.severity is not Severity.VIOLATION]
            if violations:
                result, message = FAIL, "; ".join(dict.fromkeys(violations))
            elif warnings:
                result, message = WARN, "; ".join(dict.fromkeys(warnings))
            else:
                result, message = PASS, f'complies with DaemonSetPolicy "{policy.name}" ({rule})'
            out.append(
                RuleResult(
                    namespace, name, policy.name, rule, result, _clip(message), uid, str(policy.enforcement)
                )
            )
    return out


def _timestamp(now: dt.datetime) -> dict[str, int]:
    return {"seconds": int(now.timestamp()), "nanos": 0}


def _identity(entry: Mapping[str, Any]) -> tuple[object, ...]:
    """What makes a stored result the same finding (its timestamp aside)."""
    resources = entry.get("resources") or [{}]
    ref = resources[0] if isinstance(resources, list) and resources else {}
    ref = ref if isinstance(ref, Mapping) else {}
    return (
        entry.get("policy"), entry.get("rule"), entry.get("result"), entry.get("message"),
        ref.get("name"), ref.get("uid"),
    )  # fmt: skip


def _entry(r: RuleResult, stamp: Mapping[str, Any]) -> dict[str, Any]:
    ref: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "DaemonSet", "namespace": r.namespace}
    ref["name"] = r.name
    if r.uid:
        ref["uid"] = r.uid
    severity = WARN_SEVERITY if r.result == WARN else RULE_SEVERITY.get(r.rule, "medium")
    entry: dict[str, Any] = {
        "source": SOURCE,
        "policy": r.policy,
        "rule": r.rule,
        "category": CATEGORY,
        "severity": severity,
        "result": r.result,
        "scored": r.result != WARN,  # warn: "not met, and not scored"
        "message": r.message,
        "resources": [ref],
        "timestamp": dict(stamp),
    }
    if r.enforcement:
        entry["properties"] = {"enforcement": r.enforcement}
    return entry


def build_report(
    fmt: ReportFormat,
    namespace: str,
    results: Iterable[RuleResult],
    *,
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    max_results: int = MAX_RESULTS,
) -> dict[str, Any]:
    """The whole report for one namespace, as a server-side apply body. `previous`: the stored
    report (its results' timestamps are kept for results that didn't change)."""
    ordered = sorted(results, key=RuleResult.sort_key)
    stamps: dict[tuple[object, ...], Any] = {}
    for old in (previous or {}).get("results") or ():
        if isinstance(old, Mapping) and isinstance(old.get("timestamp"), Mapping):
            stamps.setdefault(_identity(old), old["timestamp"])
    fresh = _timestamp(now)
    listed = []
    size = 0
    for r in ordered[:max_results]:
        entry = _entry(r, fresh)
        entry["timestamp"] = dict(stamps.get(_identity(entry), fresh))
        size += len(orjson.dumps(entry))
        if size > MAX_RESULT_BYTES:
            break
        listed.append(entry)
    summary = {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
    for r in ordered:
        summary[r.result] += 1
    unlisted = len(ordered) - len(listed)
    meta: dict[str, Any] = {"name": REPORT_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)}
    if unlisted:
        meta["annotations"] = {UNLISTED_ANNOTATION: str(unlisted)}
    body: dict[str, Any] = {"apiVersion": fmt.api_version, "kind": fmt.kind, "metadata": meta}
    if fmt.openreports:
        body["source"] = SOURCE
        body["configuration"] = {"limits": {"maxResults": max_results}}
    body["summary"] = summary
    body["results"] = listed
    return body


_COMPARED = ("source", "configuration", "summary", "results")


def report_changed(body: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Whether applying `body` would change the stored report (what dsguard writes of it)."""
    if stored is None:
        return True
    if any(body.get(k) != stored.get(k) for k in _COMPARED):
        return True
    meta, old = body.get("metadata") or {}, stored.get("metadata") or {}
    if any(old.get("labels", {}).get(k) != v for k, v in (meta.get("labels") or {}).items()):
        return True
    annotations = old.get("annotations") or {}
    return (meta.get("annotations") or {}).get(UNLISTED_ANNOTATION) != annotations.get(UNLISTED_ANNOTATION)
