"""A DaemonSet's rollout as the guard sees it, and what to do about it. Pure.

The update revision is the DaemonSet's newest ControllerRevision (the DaemonSet controller
labels each pod with its revision's `controller-revision-hash`). Pods on that revision are the
"updated" ones; the threshold counts the failing ones among them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dsguard.annotations import (
    PAUSED_REVISION,
    STALLED_REVISION,
    is_paused,
    rolled_back_here,
    waves_in_progress,
)
from dsguard.daemonset import as_mapping
from dsguard.intstr import IntOrPercent
from dsguard.pod_health import (
    NodeHealth,
    PodView,
    failure_reason,
    reason_kind,
)
from dsguard.policy import GuardAction, GuardPolicy
from dsguard.revisions import Revision, previous_revision, update_revision
from guard.notify.alert import FailingPod


@dataclass(frozen=True, slots=True)
class DaemonSetState:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    observed_generation: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    strategy: Mapping[str, Any]
    template: Mapping[str, Any]
    desired: int
    updated: int
    available: int
    ready: int
    min_ready_seconds: int = 0

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> DaemonSetState:
        meta = as_mapping(obj.get("metadata"))
        spec = as_mapping(obj.get("spec"))
        status = as_mapping(obj.get("status"))
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            labels=as_mapping(meta.get("labels")),
            annotations=as_mapping(meta.get("annotations")),
            strategy=as_mapping(spec.get("updateStrategy")),
            template=as_mapping(spec.get("template")),
            desired=int(status.get("desiredNumberScheduled") or 0),
            updated=int(status.get("updatedNumberScheduled") or 0),
            available=int(status.get("numberAvailable") or 0),
            ready=int(status.get("numberReady") or 0),
            min_ready_seconds=_non_negative(spec.get("minReadySeconds")),
        )

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def paused(self) -> bool:
        return is_paused(self.annotations)

    @property
    def strategy_type(self) -> str:
        return str(self.strategy.get("type") or "RollingUpdate")

    @property
    def progress(self) -> tuple[int, int, int, int]:
        return (self.desired, self.updated, self.available, self.ready)

    @property
    def complete(self) -> bool:
        return self.updated >= self.desired and self.available >= self.desired


def _non_negative(raw: object) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 0


def threshold_count(threshold: IntOrPercent, updated: int) -> int:
    """failureThreshold as a pod count: a percentage of the updated pods, rounded up, at least 1."""
    if isinstance(threshold, int):
        return threshold
    return max(1, math.ceil(int(threshold[:-1]) * updated / 100))


@dataclass(frozen=True)
class Assessment:
    revision: str
    updated: int  # pods on the update revision
    failing: tuple[FailingPod, ...]
    threshold: int

    @property
    def crossed(self) -> bool:
        return len(self.failing) >= self.threshold

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for f in self.failing:
            key = reason_kind(f.reason)
            reasons[key] = reasons.get(key, 0) + 1
        why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        nodes = ", ".join(f.node for f in self.failing[:5]) + (" ..." if len(self.failing) > 5 else "")
        return (
            f"{len(self.failing)} of {self.updated} pods on revision {self.revision} failing "
            f"(threshold {self.threshold}): {why}; nodes: {nodes}"
        )


def assess(
    revision: str,
    pods: Iterable[PodView],
    nodes: Mapping[str, NodeHealth],
    guard: GuardPolicy,
    now: float,
) -> Assessment:
    updated = 0
    failing: list[FailingPod] = []
    for pod in pods:
        if pod.revision != revision or pod.deleting:
            continue
        updated += 1
        reason = failure_reason(pod, nodes.get(pod.node), guard, now)
        if reason is not None:
            failing.append(FailingPod(pod=pod.name, node=pod.node, reason=reason))
    failing.sort(key=lambda f: f.pod)
    return Assessment(revision, updated, tuple(failing), threshold_count(guard.failure_threshold, updated))


class Step(StrEnum):
    NONE = "none"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    RESUME = "resume"  # a new revision replaced the paused one: a new rollout, watched from scratch
    STALLED = "stalled"
    WAVE = "wave"  # a wave rollout's own step (dsguard.waves): recorded, like the others, per version


@dataclass(frozen=True)
class Decision:
    step: Step
    revision: Revision | None = None
    assessment: Assessment | None = None
    previous: Revision | None = None
    note: str = ""
    reason: str = ""  # why, when not the assessment's failing pods (a wave gate over its limit)

    def summary(self) -> str:
        if self.reason:
            return self.reason
        return self.assessment.summary() if self.assessment else self.note


NOTHING = Decision(Step.NONE)


def decide(
    ds: DaemonSetState,
    revisions: Iterable[Revision],
    pods: Iterable[PodView],
    nodes: Mapping[str, NodeHealth],
    guard: GuardPolicy,
    *,
    now: float,
    progress_since: float,
) -> Decision:
    """The one step to take now. Every step is recorded on the DaemonSet (annotations), so the
    same inputs after a restart decide NONE: each action happens once per revision."""
    revs = list(revisions)
    current = update_revision(revs)
    if current is None or ds.observed_generation < ds.generation:
        return NOTHING  # the DaemonSet controller hasn't caught up with the latest spec yet
    if ds.paused and ds.annotations.get(PAUSED_REVISION) not in (None, current.hash):
        return Decision(Step.RESUME, current, note=f"revision {current.hash} replaced the paused one")
    previous = previous_revision(revs)
    if previous is None:
        return NOTHING  # a first revision is a creation, not a rolling update: nothing to stop or undo
    assessment = assess(current.hash, pods, nodes, guard, now)
    # NONE decisions still carry the assessment: the failing-pods gauge counts paused rollouts too
    quiet = Decision(Step.NONE, current, assessment)
    if ds.paused:
        return quiet
    if rolled_back_here(ds.annotations, current.hash):
        return quiet  # re-applying the exact template that was rolled back is a deliberate choice
    if assessment.crossed:
        if guard.action is GuardAction.ROLLBACK:
            return Decision(Step.ROLLBACK, current, assessment, previous)
        if ds.strategy_type != "OnDelete" or waves_in_progress(ds.annotations, current.hash):
            return Decision(Step.PAUSE, current, assessment)  # a wave rollout stops deleting pods
        return quiet  # the user's OnDelete already replaces pods only when someone deletes them
    if (
        not ds.complete
        and ds.strategy_type != "OnDelete"
        and now - progress_since >= guard.progress_deadline_seconds
        and ds.annotations.get(STALLED_REVISION) != current.hash
    ):
        return Decision(
            Step.STALLED,
            current,
            assessment,
            note=f"no progress for {int(now - progress_since)}s "
            f"(deadline {guard.progress_deadline_seconds}s): "
            f"{ds.updated} of {ds.desired} updated, "
            f"{ds.available} available",
        )
    return quiet
