"""What `dsguard status` reports about each DaemonSet. Pure: raw API dicts and a clock in, frozen
dataclasses out; the command (dsguard/cli/status/) reads the cluster and renders.

Per DaemonSet: the rollout counts of its status, the pods failing by reason (the guard's own
`failure_reason`, with the guard section of the first matching policy that has one), what the
guard did to it (the dsguard.io/* annotations) and what its policies find wrong with it.

`StatusReport.to_dict()` is the JSON/YAML schema (docs/status.md); keys are only ever added.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dsguard.annotations import PauseInfo, RollbackInfo, pause_info, rollback_info, stalled
from dsguard.daemonset import as_mapping
from dsguard.facts import ClusterFacts
from dsguard.pod_health import NodeHealth, PodView, failure_reason, reason_kind
from dsguard.policy import GuardPolicy, Policy, guard_policy_for
from dsguard.revisions import Revision, update_revision
from dsguard.rules.engine import findings_by_policy

SCHEMA_API_VERSION = "dsguard.io/v1alpha1"
SCHEMA_KIND = "DaemonSetStatusReport"


class Rollout(StrEnum):
    """Where a DaemonSet's rollout stands, worst first."""

    PAUSED = "paused"  # the guard paused the update revision
    ROLLED_BACK = "rolled-back"  # the guard rolled back, and no newer template has been applied
    PROGRESSING = "progressing"
    COMPLETE = "complete"  # updated == desired == available, observedGeneration current


class Outcome(StrEnum):
    """What `--until-done` makes of a whole report."""

    DONE = "done"  # every rollout complete: exit 0
    FAILED = "failed"  # one paused or rolled back by the guard: exit 1
    WAITING = "waiting"


def _int(raw: object) -> int:
    if isinstance(raw, int | str):
        try:
            return int(raw)
        except ValueError:
            return 0
    return 0


@dataclass(frozen=True)
class ReasonCount:
    reason: str  # CrashLoopBackOff, ImagePullBackOff, ..., "restarted", "not Ready", "node NotReady"
    count: int  # failing pods of the DaemonSet with this reason
    updated: int  # ... of which on the update revision

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "count": self.count, "updated": self.updated}


@dataclass(frozen=True)
class Violation:
    policy: str
    rule: str
    message: str
    severity: str  # "violation" or "warning" (never denies, e.g. unknownVersion: Warn)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "rule": self.rule, "message": self.message, "severity": self.severity}


@dataclass(frozen=True)
class DaemonSetReport:
    namespace: str
    name: str
    policies: tuple[str, ...]  # names of the matching DaemonSetPolicies; () = ungoverned
    guard_policy: str | None  # the policy whose guard section judged the pods; None = defaults
    generation: int
    observed_generation: int
    desired: int  # status.desiredNumberScheduled
    updated: int  # status.updatedNumberScheduled
    ready: int  # status.numberReady
    available: int  # status.numberAvailable
    update_revision: str | None  # hash of the newest ControllerRevision
    pods: int  # pods of the DaemonSet (not being deleted)
    updated_pods: int  # ... on the update revision
    failing: tuple[ReasonCount, ...] = ()  # most frequent first
    paused: PauseInfo | None = None
    rolled_back: RollbackInfo | None = None
    stalled: bool = False  # the guard reported the update revision as stalled
    violations: tuple[Violation, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def governed(self) -> bool:
        return bool(self.policies)

    @property
    def generation_observed(self) -> bool:
        return self.observed_generation >= self.generation

    @property
    def failing_total(self) -> int:
        return sum(r.count for r in self.failing)

    @property
    def failing_updated(self) -> int:
        return sum(r.updated for r in self.failing)

    @property
    def rollout(self) -> Rollout:
        if self.paused is not None and self.paused.current:
            return Rollout.PAUSED
        if self.rolled_back is not None and self.rolled_back.current:
            return Rollout.ROLLED_BACK
        if self.generation_observed and self.updated == self.desired == self.available:
            return Rollout.COMPLETE
        return Rollout.PROGRESSING

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "governed": self.governed,
            "policies": list(self.policies),
            "guardPolicy": self.guard_policy,
            "rollout": self.rollout.value,
            "generation": self.generation,
            "observedGeneration": self.observed_generation,
            "desired": self.desired,
            "updated": self.updated,
            "ready": self.ready,
            "available": self.available,
            "updateRevision": self.update_revision,
            "pods": {"total": self.pods, "updated": self.updated_pods},
            "failing": {
                "total": self.failing_total,
                "updated": self.failing_updated,
                "byReason": [r.to_dict() for r in self.failing],
            },
            "paused": self.paused.to_dict() if self.paused else None,
            "rolledBack": self.rolled_back.to_dict() if self.rolled_back else None,
            "stalled": self.stalled,
            "violations": [v.to_dict() for v in self.violations],
        }


@dataclass(frozen=True)
class StatusReport:
    generated_at: float  # epoch seconds
    namespace: str | None  # None: every namespace
    policy_source: str  # "cluster" or "files"
    daemonsets: tuple[DaemonSetReport, ...]
    policy_errors: Mapping[str, str] = field(default_factory=dict)  # policy -> why it is ignored

    def outcome(self) -> Outcome:
        states = [d.rollout for d in self.daemonsets]
        # A pause counts once the controller has seen the latest spec: until then a new template
        # (`kubectl apply` of the fix) may be about to replace the paused revision.
        if any(
            d.rollout in (Rollout.PAUSED, Rollout.ROLLED_BACK) and d.generation_observed
            for d in self.daemonsets
        ):
            return Outcome.FAILED
        if all(s is Rollout.COMPLETE for s in states):
            return Outcome.DONE
        return Outcome.WAITING

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": SCHEMA_API_VERSION,
            "kind": SCHEMA_KIND,
            "generatedAt": format_time(self.generated_at),
            "namespace": self.namespace,
            "policySource": self.policy_source,
            "policyErrors": [{"policy": k, "error": v} for k, v in sorted(self.policy_errors.items())],
            "daemonsets": [d.to_dict() for d in self.daemonsets],
        }

    def content(self) -> dict[str, Any]:
        """to_dict() without the clock: equal when nothing worth printing again changed."""
        out = self.to_dict()
        del out["generatedAt"]
        return out


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failing(
    pods: Iterable[PodView],
    revision: str | None,
    nodes: Mapping[str, NodeHealth],
    guard: GuardPolicy,
    now: float,
) -> tuple[int, int, tuple[ReasonCount, ...]]:
    total = updated = 0
    counts: dict[str, list[int]] = {}
    for pod in pods:
        if pod.deleting:
            continue
        total += 1
        on_update = revision is not None and pod.revision == revision
        updated += on_update
        reason = failure_reason(pod, nodes.get(pod.node), guard, now)
        if reason is None:
            continue
        c = counts.setdefault(reason_kind(reason), [0, 0])
        c[0] += 1
        c[1] += on_update
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return total, updated, tuple(ReasonCount(r, n, u) for r, (n, u) in ordered)


def daemonset_report(
    ds: Mapping[str, Any],
    *,
    pods: Iterable[PodView],
    revisions: Iterable[Revision],
    nodes: Mapping[str, NodeHealth],
    policies: Sequence[Policy],
    facts: ClusterFacts,
    now: float,
) -> DaemonSetReport:
    """One DaemonSet's row. pods and revisions may include other owners' (filtered by owner uid)."""
    meta = as_mapping(ds.get("metadata"))
    status = as_mapping(ds.get("status"))
    uid = str(meta.get("uid", ""))
    annotations = as_mapping(meta.get("annotations"))
    found = findings_by_policy(policies, ds, facts=facts)
    names = tuple(p.name for p, _ in found)
    guard_name, guard = guard_policy_for([p for p, _ in found])
    newest = update_revision(r for r in revisions if r.owner_uid == uid)
    revision = newest.hash if newest is not None else None
    generation = _int(meta.get("generation"))
    observed = _int(status.get("observedGeneration"))
    total, updated_pods, failing = _failing(
        (p for p in pods if p.owner_uid == uid), revision, nodes, guard, now
    )
    violations = tuple(
        Violation(p.name, f.rule, f.message, f.severity.value) for p, findings in found for f in findings
    )
    return DaemonSetReport(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        policies=names,
        guard_policy=guard_name,
        generation=generation,
        observed_generation=observed,
        desired=_int(status.get("desiredNumberScheduled")),
        updated=_int(status.get("updatedNumberScheduled")),
        ready=_int(status.get("numberReady")),
        available=_int(status.get("numberAvailable")),
        update_revision=revision,
        pods=total,
        updated_pods=updated_pods,
        failing=failing,
        paused=pause_info(annotations, revision),
        rolled_back=rollback_info(annotations, revision, observed >= generation),
        stalled=stalled(annotations, revision),
        violations=violations,
    )


def build_report(
    *,
    daemonsets: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    revisions: Iterable[Mapping[str, Any]],
    policies: Sequence[Policy],
    facts: ClusterFacts,
    now: float,
    namespace: str | None,
    name: str | None = None,
    policy_errors: Mapping[str, str] | None = None,
    policy_source: str = "cluster",
) -> StatusReport:
    """The governed DaemonSets (matched by at least one policy); with `name`, just the DaemonSets
    of that name, governed or not (none when there is no such DaemonSet)."""
    pods_of: dict[str, list[PodView]] = {}
    for pod in map(PodView.from_pod, pods):
        if pod is not None:
            pods_of.setdefault(pod.owner_uid, []).append(pod)
    revisions_of: dict[str, list[Revision]] = {}
    for rev in map(Revision.from_object, revisions):
        if rev is not None:
            revisions_of.setdefault(rev.owner_uid, []).append(rev)
    health = {h.name: h for h in map(NodeHealth.from_node, nodes)}
    rows: list[DaemonSetReport] = []
    for ds in daemonsets:
        meta = as_mapping(ds.get("metadata"))
        if name is not None and str(meta.get("name", "")) != name:
            continue
        uid = str(meta.get("uid", ""))
        row = daemonset_report(
            ds,
            pods=pods_of.get(uid, ()),
            revisions=revisions_of.get(uid, ()),
            nodes=health,
            policies=policies,
            facts=facts,
            now=now,
        )
        if row.governed or name is not None:
            rows.append(row)
    rows.sort(key=lambda r: (r.namespace, r.name))
    return StatusReport(
        generated_at=now,
        namespace=namespace,
        policy_source=policy_source,
        daemonsets=tuple(rows),
        policy_errors=dict(policy_errors or {}),
    )
