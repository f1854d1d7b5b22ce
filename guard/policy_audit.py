"""Background audit, pure part: what every DaemonSet already in the cluster violates, per policy,
and the DaemonSetPolicy `status` and Events that report it.

Admission only judges a DaemonSet when it changes. The cluster changes under DaemonSets that
don't: a new tainted node pool, a node upgraded to a kubelet an agent doesn't support, a new or
stricter policy. The audit re-judges every governed DaemonSet as it stands (all rules, whatever
the policy's enforcement; see engine.findings_by_policy) whenever policies, nodes, namespaces or
DaemonSet specs change. No I/O here: guard/audit_loop.py watches, writes and records.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsguard.facts import ClusterFacts
from dsguard.policy import Policy
from dsguard.rules.context import Finding, Severity
from dsguard.rules.engine import findings_by_policy

# The status stays small whatever the cluster holds (etcd objects are capped at 1.5 MiB, and
# `kubectl get -o yaml` should stay readable): the count is exact, the list is not.
MAX_LISTED = 20
MAX_MESSAGE = 1024

READY = "Ready"
COMPLIANT = "Compliant"


@dataclass(frozen=True, order=True)
class Violation:
    namespace: str
    name: str
    policy: str
    rule: str
    message: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PolicyAudit:
    policy: str
    matched: tuple[str, ...]  # namespace/name of every DaemonSet the policy governs, sorted
    violations: tuple[Violation, ...]  # sorted by DaemonSet, then rule

    @property
    def violating(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.ref for v in self.violations))


def _ref(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


# Told every DaemonSet judged and what each matching policy found (policy reports read it).
OnJudged = Callable[[Mapping[str, Any], Sequence[tuple[Policy, Sequence[Finding]]]], None]


def audit(
    policies: Sequence[Policy],
    daemonsets: Iterable[Mapping[str, Any]],
    facts: ClusterFacts,
    *,
    on_judged: OnJudged | None = None,
) -> dict[str, PolicyAudit]:
    """Every policy (governing DaemonSets or not) -> its audit. Warnings (e.g. an untagged image
    under unknownVersion: Warn) are not violations."""
    matched: dict[str, list[str]] = {p.name: [] for p in policies}
    found: dict[str, list[Violation]] = {p.name: [] for p in policies}
    for obj in daemonsets:
        namespace, name = _ref(obj)
        judged = findings_by_policy(policies, obj, facts=facts)
        if on_judged is not None:
            on_judged(obj, judged)
        for policy, findings in judged:
            matched[policy.name].append(f"{namespace}/{name}")
            found[policy.name] += [
                Violation(namespace, name, policy.name, f.rule, f.message)
                for f in findings
                if f.severity is Severity.VIOLATION
            ]
    return {p: PolicyAudit(p, tuple(sorted(matched[p])), tuple(sorted(set(found[p])))) for p in matched}


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed_violations(result: PolicyAudit) -> list[dict[str, Any]]:
    """One entry per violating DaemonSet (rules and messages joined), the first MAX_LISTED."""
    by_ds: dict[tuple[str, str], list[Violation]] = {}
    for v in result.violations:
        by_ds.setdefault((v.namespace, v.name), []).append(v)
    return [
        {
            "namespace": ns,
            "name": name,
            "rules": sorted({v.rule for v in vs}),
            "message": _clip("; ".join(f"{v.rule}: {v.message}" for v in vs)),
        }
        for (ns, name), vs in list(by_ds.items())[:MAX_LISTED]
    ]


def _condition(
    type_: str, status: str, reason: str, message: str, previous: Mapping[str, Any], now: str, generation: int
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status does."""
    before = next(
        (c for c in previous.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == type_),
        None,
    )
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": _clip(message, 32768),
        "observedGeneration": generation,
        "lastTransitionTime": since or now,
    }


def policy_status(
    result: PolicyAudit | None,
    *,
    error: str | None,
    enforced: bool,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    """The DaemonSetPolicy status for one audit. `error`: why the latest spec was rejected;
    `enforced`: whether a (previous) valid version is still enforced; `previous`: the stored status."""
    if error is None:
        ready = _condition(
            READY, "True", "Valid", "the policy is valid and enforced", previous, now, generation
        )
    else:
        detail = "still enforcing its previous valid version" if enforced else "not enforced until fixed"
        ready = _condition(READY, "False", "InvalidSpec", f"{error} ({detail})", previous, now, generation)
    status: dict[str, Any] = {"observedGeneration": generation, "auditedAt": now}
    if result is None:
        compliant = _condition(
            COMPLIANT, "Unknown", "NotAudited", "the policy is not enforced, so it is not audited",
            previous, now, generation,
        )  # fmt: skip
        status.update(
            matchedDaemonSets=0, violationCount=0, violations=[], unlistedViolations=0,
            conditions=[ready, compliant],
        )  # fmt: skip
        return status
    violating = result.violating
    if violating:
        listed = listed_violations(result)
        more = len(violating) - len(listed)
        message = (
            f"{len(violating)} of {len(result.matched)} governed DaemonSet(s) violate this policy: "
            + ", ".join(violating[:5])
            + (f" and {len(violating) - 5} more" if len(violating) > 5 else "")
        )
        compliant = _condition(COMPLIANT, "False", "ViolationsFound", message, previous, now, generation)
    else:
        listed, more = [], 0
        message = f"all {len(result.matched)} governed DaemonSet(s) comply"
        compliant = _condition(COMPLIANT, "True", "NoViolations", message, previous, now, generation)
    status.update(
        matchedDaemonSets=len(result.matched),
        violationCount=len(violating),
        violations=listed,
        unlistedViolations=more,  # always written: a merge patch keeps keys it doesn't mention
        conditions=[ready, compliant],
    )
    return status


def status_changed(new: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether writing `new` changes anything but the audit time (so a steady cluster costs no writes)."""
    ignore = ("auditedAt",)
    return {k: v for k, v in new.items() if k not in ignore} != {
        k: v for k, v in stored.items() if k not in ignore
    }


def known_violations(stored: Mapping[str, Any], policy: str) -> set[tuple[str, str, str, str]]:
    """(policy, namespace, name, rule) already reported in a stored status: a restarted guard
    doesn't announce them again. Only the listed ones are known (the list is bounded)."""
    out: set[tuple[str, str, str, str]] = set()
    for entry in stored.get("violations") or ():
        if isinstance(entry, Mapping):
            for rule in entry.get("rules") or ():
                out.add((policy, str(entry.get("namespace")), str(entry.get("name")), str(rule)))
    return out


@dataclass(frozen=True)
class EventPlan:
    """Events to record on DaemonSets after an audit."""

    new: tuple[Violation, ...]  # Warning PolicyViolation, one per (DaemonSet, policy, rule)
    resolved: tuple[tuple[str, str, str, str], ...]  # Normal PolicyViolationResolved


def plan_events(
    results: Mapping[str, PolicyAudit],
    before: set[tuple[str, str, str, str]],
    present: Collection[tuple[str, str]],
) -> tuple[EventPlan, set[tuple[str, str, str, str]]]:
    """What changed since the previous audit (`before`), and the new `before` for the next one.
    `present`: (namespace, name) of the DaemonSets that exist: a deleted one gets no Event."""
    now: dict[tuple[str, str, str, str], Violation] = {}
    for result in results.values():
        for v in result.violations:
            now.setdefault((v.policy, v.namespace, v.name, v.rule), v)
    new = tuple(v for k, v in sorted(now.items()) if k not in before)
    # A deleted policy's or DaemonSet's violations are forgotten, not announced as resolved.
    resolved = tuple(
        sorted(k for k in before if k not in now and k[0] in results and (k[1], k[2]) in present)
    )
    return EventPlan(new, resolved), set(now)
