"""dsguard.waves: the wave plan and the one step to take now (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from dsguard.annotations import BAKE_STARTED_AT, PROMOTED_WAVE, WAVE, WAVES_REVISION
from dsguard.pod_health import PodView
from dsguard.policy import Approval, WavesPolicy
from dsguard.waves import (
    PlanNode,
    Wave,
    WaveDecision,
    WaveStep,
    current_pods,
    decide_waves,
    max_unavailable,
    plan_waves,
    progress,
    resolve_count,
    targeted_plan,
)

T0 = 1_800_000_000.0
ZONE = "topology.kubernetes.io/zone"
NEW, OLD = "new", "old"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zoned(spec: str) -> list[PlanNode]:
    """ "a:2 b:3" -> a-0, a-1 in zone a; b-0..b-2 in zone b; "-:1" a node without the label."""
    out = []
    for part in spec.split():
        zone, count = part.split(":")
        for i in range(int(count)):
            labels = {} if zone == "-" else {ZONE: zone}
            out.append(PlanNode(f"{'x' if zone == '-' else zone}-{i}", labels))
    return out


def names(waves: tuple[Wave, ...]) -> list[tuple[str, list[str]]]:
    return [(w.name, list(w.nodes)) for w in waves]


@pytest.mark.parametrize(
    ("title", "policy", "nodes", "want"),
    [
        ("no canary, no groups: one wave", WavesPolicy(), zoned("a:2 b:1"), [("all", ["a-0", "a-1", "b-0"])]),
        (
            "canary by name, then the rest",
            WavesPolicy(canary=2),
            zoned("b:2 a:2"),
            [("canary", ["a-0", "a-1"]), ("rest", ["b-0", "b-1"])],
        ),
        (
            "canary spread across zones in wave order, then a wave per zone",
            WavesPolicy(canary=3, group_by=ZONE),
            zoned("a:3 b:3 c:1"),
            [
                ("canary", ["a-0", "b-0", "c-0"]),
                (f"{ZONE}=a", ["a-1", "a-2"]),
                (f"{ZONE}=b", ["b-1", "b-2"]),
            ],
        ),
        (
            "order first, others sorted, unlabelled last",
            WavesPolicy(group_by=ZONE, order=("c", "a")),
            zoned("a:1 b:1 c:1 -:1"),
            [
                (f"{ZONE}=c", ["c-0"]),
                (f"{ZONE}=a", ["a-0"]),
                (f"{ZONE}=b", ["b-0"]),
                (f"{ZONE} unset", ["x-0"]),
            ],
        ),
        (
            "an order value without nodes is skipped",
            WavesPolicy(group_by=ZONE, order=("z", "b")),
            zoned("a:1 b:1"),
            [(f"{ZONE}=b", ["b-0"]), (f"{ZONE}=a", ["a-0"])],
        ),
        (
            "canary percentage rounds up",
            WavesPolicy(canary="1%", group_by=ZONE),
            zoned("a:150"),
            # names sort as strings: a-0, a-1, a-10, a-100, ...
            [("canary", ["a-0", "a-1"]), (f"{ZONE}=a", sorted(f"a-{i}" for i in range(2, 150)))],
        ),
        (
            "cumulative steps count the canary",
            WavesPolicy(canary=1, steps=("10%", "50%", "100%")),
            zoned("a:10"),
            [
                ("canary", ["a-0"]),
                ("step 2 (50%)", ["a-1", "a-2", "a-3", "a-4"]),
                ("step 3 (100%)", ["a-5", "a-6", "a-7", "a-8", "a-9"]),
            ],
        ),
        ("no nodes: no waves", WavesPolicy(canary=2, group_by=ZONE), [], []),
        (
            "a canary larger than the fleet takes it all",
            WavesPolicy(canary=5, group_by=ZONE),
            zoned("a:1 b:1"),
            [("canary", ["a-0", "b-0"])],
        ),
    ],
)
def test_plan_waves(
    title: str, policy: WavesPolicy, nodes: list[PlanNode], want: list[tuple[str, list[str]]]
) -> None:
    waves = plan_waves(policy, nodes)
    assert names(waves) == want
    flat = [n for w in waves for n in w.nodes]
    assert sorted(flat) == sorted(n.name for n in nodes), "every node in exactly one wave"


def test_plan_is_independent_of_input_order() -> None:
    nodes = zoned("a:3 b:3 c:3")
    policy = WavesPolicy(canary=2, group_by=ZONE)
    assert plan_waves(policy, nodes) == plan_waves(policy, list(reversed(nodes)))


@pytest.mark.parametrize(
    ("value", "total", "want"),
    [(2, 10, 2), ("10%", 10, 1), ("11%", 10, 2), ("1%", 1, 1), (50, 3, 3), (1, 0, 0)],
)
def test_resolve_count(value: int | str, total: int, want: int) -> None:
    assert resolve_count(value, total) == want


@pytest.mark.parametrize(
    ("policy", "strategy", "total", "want"),
    [
        (WavesPolicy(max_unavailable=3), None, 10, 3),
        (WavesPolicy(), {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}, 10, 2),
        (WavesPolicy(), {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}}, 10, 3),
        (
            WavesPolicy(),
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            10,
            1,
        ),
        (WavesPolicy(), {"type": "RollingUpdate"}, 10, 1),
        (WavesPolicy(), None, 10, 1),
        (WavesPolicy(max_unavailable="50%"), None, 5, 3),
    ],
)
def test_max_unavailable(
    policy: WavesPolicy, strategy: dict[str, object] | None, total: int, want: int
) -> None:
    assert max_unavailable(policy, strategy, total) == want


def pod(
    node: str,
    revision: str,
    *,
    ready: bool = True,
    ready_since: float = T0 - 100,
    deleting: bool = False,
    created: float = T0 - 200,
) -> PodView:
    return PodView(
        namespace="ns",
        name=f"agent-{node}-{revision}",
        owner_uid="uid-1",
        node=node,
        revision=revision,
        phase="Running",
        ready=ready,
        restarts=0,
        waiting=(),
        created=created,
        started=created,
        deleting=deleting,
        uid=f"uid-{node}-{revision}",
        ready_since=ready_since if ready else None,
    )


LABELS: Mapping[str, Mapping[str, str]] = {
    **{f"a-{i}": {ZONE: "a"} for i in range(3)},
    **{f"b-{i}": {ZONE: "b"} for i in range(3)},
}
POLICY = WavesPolicy(canary=1, group_by=ZONE, bake_seconds=60, max_unavailable=1)


def state(wave: int = 0, **extra: str) -> dict[str, str]:
    return {WAVES_REVISION: NEW, WAVE: str(wave), **extra}


def decide(
    annotations: Mapping[str, str],
    pods: list[PodView],
    *,
    policy: WavesPolicy = POLICY,
    now: float = T0,
    min_ready: int = 0,
) -> WaveDecision:
    return decide_waves(
        annotations=annotations,
        revision=NEW,
        pods=pods,
        node_labels=LABELS,
        policy=policy,
        user_strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        min_ready_seconds=min_ready,
        now=now,
    )


def fleet(updated: set[str], **overrides: PodView) -> list[PodView]:
    out = [overrides.get(n) or pod(n, NEW if n in updated else OLD) for n in sorted(LABELS)]
    return out


def test_start_when_a_new_revision_has_old_pods() -> None:
    d = decide({}, fleet(set()))
    assert d.step is WaveStep.START and d.takeover == 0
    assert names(d.waves) == [
        ("canary", ["a-0"]),
        (f"{ZONE}=a", ["a-1", "a-2"]),
        (f"{ZONE}=b", ["b-0", "b-1", "b-2"]),
    ]


def test_start_counts_what_the_controller_replaced_before_the_takeover() -> None:
    assert decide({}, fleet({"a-0", "b-2"})).takeover == 2


def test_a_new_revision_mid_rollout_starts_over_with_the_canary() -> None:
    d = decide({WAVES_REVISION: "older", WAVE: "2"}, fleet(set()))
    assert d.step is WaveStep.START


def test_no_rollout_when_every_pod_runs_the_revision() -> None:
    assert decide({}, fleet(set(LABELS))).step is WaveStep.NONE


def test_canary_deletes_only_canary_pods() -> None:
    d = decide(state(0), fleet(set()))
    assert d.step is WaveStep.DELETE and [p.node for p in d.delete] == ["a-0"]


def test_deletes_within_the_unavailable_budget() -> None:
    policy = WavesPolicy(canary=1, group_by=ZONE, max_unavailable=2)
    d = decide(state(2), fleet({"a-0", "a-1", "a-2"}), policy=policy)
    assert d.step is WaveStep.DELETE and [p.node for p in d.delete] == ["b-0", "b-1"]
    busy = fleet({"a-0", "a-1", "a-2"}, **{"b-0": pod("b-0", OLD, deleting=True)})
    d = decide(state(2), busy, policy=policy)
    assert [p.node for p in d.delete] == ["b-1"], "a pod being deleted uses the budget"
    unready = fleet(
        {"a-0", "a-1", "a-2"}, **{"a-1": pod("a-1", NEW, ready=False), "b-0": pod("b-0", OLD, deleting=True)}
    )
    assert decide(state(2), unready, policy=policy).step is WaveStep.WAIT


def test_waits_for_the_wave_to_be_available_then_bakes() -> None:
    replacing = fleet(set(), **{"a-0": pod("a-0", NEW, ready=False)})
    assert decide(state(0), replacing).step is WaveStep.WAIT
    done = fleet({"a-0"})
    d = decide(state(0), done)
    assert d.step is WaveStep.BAKE and d.wake_at == T0 + 60
    d = decide(state(0, **{BAKE_STARTED_AT: iso(T0 - 30)}), done)
    assert d.step is WaveStep.WAIT and d.wake_at == T0 + 30 and "30s left" in d.note
    d = decide(state(0, **{BAKE_STARTED_AT: iso(T0 - 60)}), done)
    assert d.step is WaveStep.ADVANCE and d.wave == 1


def test_min_ready_seconds_holds_the_wave() -> None:
    fresh = fleet({"a-0"}, **{"a-0": pod("a-0", NEW, ready_since=T0 - 5)})
    d = decide(state(0), fresh, min_ready=30)
    assert d.step is WaveStep.WAIT and d.wake_at == T0 + 25
    assert decide(state(0), fresh, min_ready=5).step is WaveStep.BAKE


def test_manual_approval_waits_for_promote() -> None:
    policy = WavesPolicy(canary=1, group_by=ZONE, approval=Approval.MANUAL)
    d = decide(state(0), fleet({"a-0"}), policy=policy)
    assert d.step is WaveStep.WAIT and "dsguard promote" in d.note
    d = decide(state(0, **{PROMOTED_WAVE: "1"}), fleet({"a-0"}), policy=policy)
    assert d.step is WaveStep.ADVANCE and d.wave == 1


def test_promote_ends_a_bake_early() -> None:
    d = decide(state(0, **{BAKE_STARTED_AT: iso(T0 - 1), PROMOTED_WAVE: "1"}), fleet({"a-0"}))
    assert d.step is WaveStep.ADVANCE


def test_an_older_promotion_does_not_approve_a_later_wave() -> None:
    policy = WavesPolicy(canary=1, group_by=ZONE, approval=Approval.MANUAL)
    d = decide(state(1, **{PROMOTED_WAVE: "1"}), fleet({"a-0", "a-1", "a-2"}), policy=policy)
    assert d.step is WaveStep.WAIT


def test_complete_after_the_last_wave() -> None:
    assert decide(state(2), fleet(set(LABELS))).step is WaveStep.COMPLETE


def test_never_deletes_beyond_the_current_wave() -> None:
    for wave in range(3):
        d = decide(state(wave), fleet(set()), policy=WavesPolicy(canary=1, group_by=ZONE, max_unavailable=6))
        allowed = {n for w in d.waves[: wave + 1] for n in w.nodes}
        assert d.step is WaveStep.DELETE and {p.node for p in d.delete} <= allowed


def test_a_node_joining_mid_rollout_is_planned_and_waited_for() -> None:
    joined = [*fleet({"a-0", "a-1", "a-2"}), pod("a-9", NEW, ready=False)]
    labels = {**LABELS, "a-9": {ZONE: "a"}}
    d = decide_waves(
        annotations=state(1),
        revision=NEW,
        pods=joined,
        node_labels=labels,
        policy=POLICY,
        user_strategy=None,
        min_ready_seconds=0,
        now=T0,
    )
    assert "a-9" in d.waves[1].nodes and d.step is WaveStep.WAIT


def test_current_pods_prefers_the_live_pod_over_the_deleting_one() -> None:
    dying, fresh = pod("a-0", OLD, deleting=True), pod("a-0", NEW, ready=False)
    assert current_pods([dying, fresh])["a-0"] is fresh
    assert current_pods([fresh, dying])["a-0"] is fresh


def test_progress_counts_updated_and_available() -> None:
    waves = plan_waves(POLICY, [PlanNode(n, LABELS[n]) for n in LABELS])
    pods = current_pods(fleet({"a-0", "a-1"}, **{"a-1": pod("a-1", NEW, ready=False)}))
    got = progress(waves, pods, NEW, 0, T0)
    assert [(p.name, p.nodes, p.updated, p.available) for p in got] == [
        ("canary", 1, 1, 1),
        (f"{ZONE}=a", 2, 1, 0),
        (f"{ZONE}=b", 3, 0, 0),
    ]


def test_targeted_plan_leaves_out_the_nodes_the_daemonset_would_not_run_on() -> None:
    from dsguard.facts import ClusterFacts
    from dsguard.scheduling import NodeInfo, Taint

    nodes = [
        NodeInfo("a-0", {ZONE: "a"}, (), "v1.33.0"),
        NodeInfo("a-1", {ZONE: "a"}, (Taint("gpu", "", "NoSchedule"),), "v1.33.0"),
        NodeInfo("b-0", {ZONE: "b"}, (), "v1.33.0"),
    ]
    ds = {
        "metadata": {"name": "agent", "namespace": "ns"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:1"}]}}},
    }
    waves = targeted_plan(WavesPolicy(group_by=ZONE), ds, ClusterFacts(nodes=tuple(nodes)))
    assert names(waves) == [(f"{ZONE}=a", ["a-0"]), (f"{ZONE}=b", ["b-0"])]


def test_the_plan_holds_still_while_a_pod_is_replaced() -> None:
    """Between the old pod's removal and the new one's creation a node has no pod: planned over the
    nodes the DaemonSet runs on, the canary stays the same nodes (not the next ones by name)."""
    policy = WavesPolicy(canary=2, group_by=ZONE, max_unavailable=1)
    everyone = fleet(set())
    first = decide(state(0), everyone, policy=policy)
    assert [p.node for p in first.delete] == ["a-0"]
    gap = [p for p in everyone if p.node != "a-0"]  # a-0's old pod gone, its new one not yet created
    unstable = decide(state(0), gap, policy=policy)
    assert unstable.waves[0].nodes != first.waves[0].nodes, "without the node list the canary shifts"
    held = decide_waves(
        annotations=state(0),
        revision=NEW,
        pods=gap,
        node_labels=LABELS,
        policy=policy,
        user_strategy=None,
        min_ready_seconds=0,
        now=T0,
        nodes=list(LABELS),
    )
    assert held.waves[0].nodes == first.waves[0].nodes
    assert held.step is WaveStep.WAIT, "a-0 has no pod yet: it counts as unavailable"


def test_a_broken_old_pod_is_replaced_whatever_the_budget() -> None:
    """As the DaemonSet controller does (allowedReplacementPods): an old pod that isn't available
    goes at once; the available ones wait for the budget."""
    policy = WavesPolicy(canary=1, group_by=ZONE, max_unavailable=1)
    broken = fleet({"a-0"}, **{"a-1": pod("a-1", OLD, ready=False), "a-2": pod("a-2", OLD, ready=False)})
    d = decide(state(1), broken, policy=policy)
    assert d.step is WaveStep.DELETE and [p.node for p in d.delete] == ["a-1", "a-2"]


def test_broken_pods_of_a_later_wave_do_not_block_this_one() -> None:
    """After a bad revision was paused in zone b and a good one applied: zone b's crash-looping
    pods wait for zone b's wave; they use none of the canary's budget."""
    policy = WavesPolicy(canary=1, group_by=ZONE, max_unavailable=1)
    later_broken = fleet(set(), **{f"b-{i}": pod(f"b-{i}", "bad", ready=False) for i in range(3)})
    d = decide(state(0), later_broken, policy=policy)
    assert d.step is WaveStep.DELETE and [p.node for p in d.delete] == ["a-0"]
