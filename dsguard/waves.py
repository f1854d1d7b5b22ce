"""Progressive rollouts: which nodes go in which wave, and the one step to take now. Pure.

For a DaemonSet whose guard policy has `waves`, the rollout of a new revision runs under
`updateStrategy: OnDelete` (set by the mutating webhook on the template change, or by the guard
when it sees the change first), so the DaemonSet controller replaces a pod only when someone
deletes it. The guard deletes the old pods wave by wave: the canary first, then one wave per
`groupBy` value (or per cumulative step), each wave at most `maxUnavailable` pods at a time, each
baked for `bakeSeconds` once its pods are all updated and available, each next one started only
when the bake is over (and, with `approval: Manual`, after `dsguard promote`). When every node
runs the new revision the user's strategy is restored.

The waves are planned from the nodes the DaemonSet has pods on (the DaemonSet controller's own
answer to "where does it run"), in a deterministic order, so a restarted guard plans the same
waves and continues from the wave recorded on the DaemonSet. A node that joins mid-rollout gets
the new template from the controller at once (OnDelete creates new pods from the current
template): it lands in its group's wave and counts in the failure signals like any updated pod.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from dsguard.annotations import WaveInfo, wave_info
from dsguard.daemonset import DaemonSetView
from dsguard.facts import ClusterFacts
from dsguard.intstr import IntOrPercent, percent_value
from dsguard.pod_health import PodView, parse_time
from dsguard.policy import Approval, WavesPolicy
from dsguard.rules.context import RuleContext

CANARY = "canary"


@dataclass(frozen=True)
class PlanNode:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Wave:
    name: str  # "canary", "topology.kubernetes.io/zone=us-east-1a", "step 2 (50%)", "all"
    nodes: tuple[str, ...]


def resolve_count(value: IntOrPercent, total: int) -> int:
    """A node count from an int or a percentage of `total`, rounded up, within 1..total."""
    n = value if isinstance(value, int) else math.ceil(int(value[:-1]) * total / 100)
    return max(1, min(n, total)) if total else 0


def _group_order(policy: WavesPolicy, values: Iterable[str]) -> list[str]:
    present = set(values)
    listed = [v for v in policy.order if v in present]
    return listed + sorted(present - set(listed))


def plan_waves(policy: WavesPolicy, nodes: Iterable[PlanNode]) -> tuple[Wave, ...]:
    """The waves, in order; every node in exactly one. Empty waves are left out."""
    ordered = sorted(nodes, key=lambda n: n.name)
    if not ordered:
        return ()
    key = policy.group_by
    groups: dict[str, list[str]] = {}
    unlabelled: list[str] = []
    if key is not None:
        for n in ordered:
            value = n.labels.get(key)
            if value is None:
                unlabelled.append(n.name)
            else:
                groups.setdefault(value, []).append(n.name)
    order = _group_order(policy, groups)

    canary: list[str] = []
    if policy.canary is not None:
        want = resolve_count(policy.canary, len(ordered))
        if key is None:
            canary = [n.name for n in ordered[:want]]
        else:
            # Round-robin over the groups in wave order: the canary sees every zone or pool it can.
            queues = [list(groups[v]) for v in order] + ([list(unlabelled)] if unlabelled else [])
            while len(canary) < want:
                for q in queues:
                    if q and len(canary) < want:
                        canary.append(q.pop(0))
    in_canary = set(canary)
    waves: list[Wave] = [Wave(CANARY, tuple(canary))] if canary else []

    if key is not None:
        for value in order:
            rest = tuple(n for n in groups[value] if n not in in_canary)
            waves.append(Wave(f"{key}={value}", rest))
        waves.append(Wave(f"{key} unset", tuple(n for n in unlabelled if n not in in_canary)))
    elif policy.steps:
        remaining = [n.name for n in ordered if n.name not in in_canary]
        done = len(canary)
        for i, step in enumerate(policy.steps, 1):
            target = min(len(ordered), math.ceil(int(step[:-1]) * len(ordered) / 100))
            take = max(0, target - done)
            waves.append(Wave(f"step {i} ({step})", tuple(remaining[:take])))
            remaining = remaining[take:]
            done += take
        if remaining:  # rounding can't leave any (the last step is 100%), but never drop a node
            waves.append(Wave(f"step {len(policy.steps)} ({policy.steps[-1]})", tuple(remaining)))
    else:
        waves.append(
            Wave("rest" if canary else "all", tuple(n.name for n in ordered if n.name not in in_canary))
        )
    return tuple(w for w in waves if w.nodes)


def plan_around(
    policy: WavesPolicy,
    by_node: Mapping[str, PodView],
    nodes: Iterable[str],
    node_labels: Mapping[str, Mapping[str, str]],
) -> tuple[Wave, ...]:
    """The waves over the nodes the DaemonSet runs on and those that have a pod of it: the plan
    holds still while a pod is replaced (between the old pod's removal and the new one's creation
    a node has none). The guard and `dsguard status` plan the same way."""
    planned = set(by_node) | set(nodes)
    return plan_waves(policy, (PlanNode(n, node_labels.get(n, {})) for n in planned))


class WaveStep(StrEnum):
    NONE = "none"  # no wave rollout to drive
    START = "start"  # record the rollout (and switch to OnDelete if the webhook didn't)
    DELETE = "delete"  # delete these old pods: the controller recreates them on the new revision
    BAKE = "bake"  # the wave is updated and available: record the start of its bake
    ADVANCE = "advance"  # start the next wave
    COMPLETE = "complete"  # every node updated: restore the user's strategy
    WAIT = "wait"  # nothing to do until pods change, or until wake_at


@dataclass(frozen=True)
class WaveDecision:
    step: WaveStep
    waves: tuple[Wave, ...] = ()
    wave: int = 0  # the wave the step concerns (ADVANCE: the wave to start)
    delete: tuple[PodView, ...] = ()
    note: str = ""
    wake_at: float | None = None  # when waiting on time (a bake, minReadySeconds)
    takeover: int = 0  # START: pods already on the new revision (replaced before the guard took over)


@dataclass(frozen=True)
class WaveProgress:
    """One wave's nodes as they stand, for `dsguard status` and the decision."""

    name: str
    nodes: int
    updated: int  # nodes whose pod runs the new revision (not being deleted)
    available: int  # ... and is available (Ready for minReadySeconds)


def current_pods(pods: Iterable[PodView]) -> dict[str, PodView]:
    """The pod of each node that counts: the one not being deleted, else the deleting one."""
    out: dict[str, PodView] = {}
    for p in pods:
        if not p.node:
            continue
        have = out.get(p.node)
        if (
            have is None
            or (have.deleting and not p.deleting)
            or (have.deleting == p.deleting and p.created > have.created)
        ):
            out[p.node] = p
    return out


def progress(
    waves: Sequence[Wave], pods: Mapping[str, PodView], revision: str, min_ready: int, now: float
) -> tuple[WaveProgress, ...]:
    out = []
    for w in waves:
        updated = available = 0
        for n in w.nodes:
            p = pods.get(n)
            if p is None or p.deleting or p.revision != revision:
                continue
            updated += 1
            available += p.available(min_ready, now)
        out.append(WaveProgress(w.name, len(w.nodes), updated, available))
    return tuple(out)


def max_unavailable(policy: WavesPolicy, user_strategy: Mapping[str, object] | None, total: int) -> int:
    """Pods replaced at once: the policy's, else the DaemonSet's own rollingUpdate.maxUnavailable
    (percentages of all its nodes, rounded up as the controller does), at least 1."""
    value: object = policy.max_unavailable
    if value is None and user_strategy is not None:
        rolling = user_strategy.get("rollingUpdate")
        value = rolling.get("maxUnavailable") if isinstance(rolling, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | str):
        return 1
    if isinstance(value, str):
        percent = percent_value(value)  # not str.isdigit: it takes "²", which int() refuses
        if percent is None or percent > 100:
            return 1
        return max(1, math.ceil(percent * total / 100))
    return max(1, value)


def decide_waves(
    *,
    annotations: Mapping[str, str],
    revision: str,
    pods: Iterable[PodView],
    node_labels: Mapping[str, Mapping[str, str]],
    policy: WavesPolicy,
    user_strategy: Mapping[str, object] | None,
    min_ready_seconds: int,
    now: float,
    deleted: Collection[str] = (),
    nodes: Collection[str] = (),
) -> WaveDecision:
    """The one wave step to take now for a DaemonSet on update revision `revision` whose pods
    (all revisions) are `pods`; `deleted`: uids of pods already deleted that may not show it yet;
    `nodes`: the nodes it runs on (dsguard.scheduling), planned over with those that have a pod, so
    the plan holds still while a pod is replaced (between the old pod's removal and the new one's
    creation a node has none). The caller handles failures (pause, rollback) first."""
    if deleted:
        pods = [replace(p, deleting=True) if p.uid in deleted else p for p in pods]
    by_node = current_pods(pods)
    waves = plan_around(policy, by_node, nodes, node_labels)
    info = wave_info(annotations)
    old = [p for p in by_node.values() if p.revision != revision]
    if info is None or info.revision != revision:
        if not old:
            return WaveDecision(WaveStep.NONE, waves)  # nothing on another revision: no rollout
        on_new = sum(1 for p in by_node.values() if p.revision == revision and not p.deleting)
        return WaveDecision(WaveStep.START, waves, 0, takeover=on_new)
    return _drive(info, waves, by_node, revision, policy, user_strategy, min_ready_seconds, now)


def _drive(
    info: WaveInfo,
    waves: tuple[Wave, ...],
    by_node: Mapping[str, PodView],
    revision: str,
    policy: WavesPolicy,
    user_strategy: Mapping[str, object] | None,
    min_ready: int,
    now: float,
) -> WaveDecision:
    if not waves:
        return WaveDecision(WaveStep.COMPLETE, waves, note="no nodes")
    index = min(info.index, len(waves) - 1)
    started = [n for w in waves[: index + 1] for n in w.nodes]
    wave = waves[index]
    # Old pods of the waves started so far (an earlier wave's too: a pod recreated there by hand).
    old = sorted(
        (
            p
            for n in started
            if (p := by_node.get(n)) is not None and not p.deleting and p.revision != revision
        ),
        key=lambda p: p.node,
    )
    if old:
        limit = max_unavailable(policy, user_strategy, len(by_node))
        # As the DaemonSet controller counts (pkg/controller/daemon/update.go, rollingUpdate), but
        # over the waves started so far: a node whose pod isn't available, or that has none (its
        # old pod gone, the new one not created yet). A later wave's broken pods are not this
        # wave's doing and wait for their own wave.
        unavailable = sum(
            1 for n in started if (p := by_node.get(n)) is None or not p.available(min_ready, now)
        )
        # An old pod that isn't available is replaced at once, whatever the budget (as the
        # controller's allowedReplacementPods); the available ones as the budget allows.
        broken = [p for p in old if not p.available(min_ready, now)]
        healthy = [p for p in old if p.available(min_ready, now)]
        chosen = broken + healthy[: max(0, limit - unavailable)]
        if chosen:
            return WaveDecision(WaveStep.DELETE, waves, index, delete=tuple(chosen))
        return WaveDecision(
            WaveStep.WAIT, waves, index, note=f"{unavailable} unavailable (maxUnavailable {limit})"
        )
    waiting = [
        p
        for n in started
        if (p := by_node.get(n)) is None
        or p.deleting
        or p.revision != revision
        or not p.available(min_ready, now)
    ]
    if waiting:
        wake = [
            p.ready_since + min_ready
            for p in waiting
            if p is not None and p.ready and not p.deleting and p.ready_since is not None and min_ready > 0
        ]
        return WaveDecision(
            WaveStep.WAIT,
            waves,
            index,
            note=f"wave {index + 1}/{len(waves)} ({wave.name}): {len(waiting)} of {len(started)} "
            "nodes not yet updated and available",
            wake_at=min(wake) if wake else None,
        )
    if index == len(waves) - 1:
        return WaveDecision(WaveStep.COMPLETE, waves, index)
    promoted = info.promoted is not None and info.promoted >= index + 1
    if policy.bake_seconds > 0 and not promoted:
        began = parse_time(info.bake_started_at) if info.bake_started_at else None
        if began is None:
            return WaveDecision(WaveStep.BAKE, waves, index, wake_at=now + policy.bake_seconds)
        ends = began + policy.bake_seconds
        if now < ends:
            return WaveDecision(
                WaveStep.WAIT,
                waves,
                index,
                note=f"baking wave {index + 1}: {int(ends - now)}s left",
                wake_at=ends,
            )
    if policy.approval is Approval.MANUAL and not promoted:
        return WaveDecision(
            WaveStep.WAIT,
            waves,
            index,
            note=f"wave {index + 2}/{len(waves)} ({waves[index + 1].name}) waits for `dsguard promote`",
        )
    return WaveDecision(WaveStep.ADVANCE, waves, index + 1)


def targeted_plan(policy: WavesPolicy, ds: Mapping[str, object], facts: ClusterFacts) -> tuple[Wave, ...]:
    """The waves for a DaemonSet that has no pods yet (a manifest, `dsguard plan -f`): over the
    nodes it would run on, as dsguard.scheduling predicts the DaemonSet controller places it."""
    ctx = RuleContext(DaemonSetView.from_object(ds), facts)
    return plan_waves(policy, (PlanNode(n.name, n.labels) for n in ctx.targeted))
