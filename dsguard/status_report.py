"""What `dsguard status` reports about each DaemonSet. Pure: raw API dicts and a clock in, frozen
dataclasses out; the command (dsguard/cli/status/) reads the cluster and renders.

Per DaemonSet: the rollout counts of its status, the pods failing by reason (the guard's own
`failure_reason`, with the guard section of the first matching policy that has one), what the
guard did to it (the dsguard.io/* annotations) and what its policies find wrong with it.

`StatusReport.to_dict()` is the JSON/YAML schema (docs/status.md); keys are only ever added.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from dsguard.annotations import (
    PauseInfo,
    RollbackInfo,
    is_paused,
    pause_info,
    rollback_info,
    stalled,
    wave_info,
    waves_in_progress,
)
from dsguard.daemonset import DaemonSetView, as_mapping
from dsguard.facts import ClusterFacts
from dsguard.pod_health import NodeHealth, PodView, failure_reason, parse_time, reason_kind
from dsguard.policy import Approval, GuardPolicy, Policy, WavesPolicy, guard_policy_for
from dsguard.revisions import Revision, update_revision
from dsguard.rules.context import RuleContext
from dsguard.rules.engine import findings_by_policy
from dsguard.waves import WaveProgress, current_pods, plan_around, progress

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
class WaveStatus:
    """A wave rollout in progress (dsguard.waves), as `dsguard status` shows it."""

    index: int  # the current wave, 0-based
    waves: tuple[WaveProgress, ...]
    bake_left: int | None  # seconds of the current wave's bake left; None when not baking
    waiting: str  # what the rollout waits for ("" when the guard is replacing pods)
    takeover: int | None  # pods the DaemonSet controller replaced before the guard took over

    @property
    def current(self) -> WaveProgress:
        return self.waves[min(self.index, len(self.waves) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "wave": self.index + 1,
            "waves": [
                {"name": w.name, "nodes": w.nodes, "updated": w.updated, "available": w.available}
                for w in self.waves
            ],
            "bakeSecondsLeft": self.bake_left,
            "waiting": self.waiting,
            "takeover": self.takeover,
        }


def wave_status(
    annotations: Mapping[str, Any],
    revision: str | None,
    waves: WavesPolicy | None,
    pods: Iterable[PodView],
    node_labels: Mapping[str, Mapping[str, str]],
    min_ready_seconds: int,
    now: float,
    nodes: Iterable[str] = (),
) -> WaveStatus | None:
    """`nodes`: the nodes the DaemonSet runs on (planned over with those that have a pod, as the
    guard plans: dsguard.waves.decide_waves)."""
    info = wave_info(annotations)
    if waves is None or revision is None or info is None or not waves_in_progress(annotations, revision):
        return None
    by_node = current_pods(pods)
    plan = plan_around(waves, by_node, nodes, node_labels)
    if not plan:
        return None
    index = min(info.index, len(plan) - 1)
    rows = progress(plan, by_node, revision, min_ready_seconds, now)
    bake_left = None
    waiting = ""
    began = parse_time(info.bake_started_at) if info.bake_started_at else None
    if began is not None and waves.bake_seconds:
        bake_left = max(0, math.ceil(began + waves.bake_seconds - now))
        waiting = f"baking, {bake_left}s left" if bake_left else ""
    done = all(r.available == r.nodes for r in rows[: index + 1])
    promoted = info.promoted is not None and info.promoted >= index + 1
    if (
        done
        and index + 1 < len(plan)
        and waves.approval is Approval.MANUAL
        and not promoted
        and not bake_left
    ):
        waiting = f"approval: dsguard promote (wave {index + 2}/{len(plan)}, {plan[index + 1].name})"
    return WaveStatus(index=index, waves=rows, bake_left=bake_left, waiting=waiting, takeover=info.takeover)


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
    waves: WaveStatus | None = None  # a wave rollout in progress (spec.guard.waves)

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
            "waves": self.waves.to_dict() if self.waves else None,
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
    node_labels: Mapping[str, Mapping[str, str]] | None = None,
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
    own = [p for p in pods if p.owner_uid == uid]
    total, updated_pods, failing = _failing(own, revision, nodes, guard, now)
    spec = as_mapping(ds.get("spec"))
    min_ready = spec.get("minReadySeconds")
    waves = None
    if guard.waves is not None and waves_in_progress(annotations, revision):
        waves = wave_status(
            annotations,
            revision,
            guard.waves,
            own,
            node_labels or {n.name: n.labels for n in facts.nodes},
            min_ready if isinstance(min_ready, int) and not isinstance(min_ready, bool) else 0,
            now,
            nodes=(n.name for n in RuleContext(DaemonSetView.from_object(ds), facts).targeted),
        )
        if waves is not None and is_paused(annotations):
            waves = replace(waves, waiting="paused: `dsguard resume` continues from this wave")
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
        waves=waves,
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
    health: dict[str, NodeHealth] = {}
    labels: dict[str, Mapping[str, str]] = {}
    for node in nodes:
        h = NodeHealth.from_node(node)
        health[h.name] = h
        labels[h.name] = as_mapping(as_mapping(node.get("metadata")).get("labels"))
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
            node_labels=labels,
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
