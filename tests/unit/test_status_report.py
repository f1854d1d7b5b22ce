"""`dsguard status`'s pure report builder: raw DaemonSets, pods, nodes, revisions, policies in;
per-DaemonSet rows (counts, failing reasons, the guard's annotations, violations) out."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from dsguard.facts import ClusterFacts
from dsguard.pod_health import reason_kind
from dsguard.policy import Policy, guard_policy_for
from dsguard.scheduling import NodeInfo
from dsguard.status_report import (
    Outcome,
    Rollout,
    StatusReport,
    build_report,
)
from tests.support import builders
from tests.support.builders import parsed_policy

T0 = 1_800_000_000.0  # "now"
NS = "logging"
UID = "uid-agent"
NEW, OLD = "newhash", "oldhash"

Obj = dict[str, Any]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


GOVERNS = parsed_policy("agents", {"match": {"namespaces": [NS]}})


def counts(
    *, observed: int = 2, desired: int = 4, updated: int = 4, ready: int = 4, available: int = 4
) -> Obj:
    """A DaemonSet's status: by default, generation 2 seen and rolled out on 4 nodes."""
    return {
        "observedGeneration": observed,
        "desiredNumberScheduled": desired,
        "updatedNumberScheduled": updated,
        "numberReady": ready,
        "numberAvailable": available,
    }


#: DaemonSets `agent` (uid UID, generation 2) in NS, rolled out (counts()) unless said otherwise.
daemonset = partial(
    builders.daemonset, namespace=NS, uid=UID, generation=2, annotations={}, labels={}, max_unavailable=1,
    container="c", image="registry.example.com/agent:2.0", status=counts(),
)  # fmt: skip


def pod(
    name: str,
    *,
    revision: str = NEW,
    owner: str = UID,
    node: str = "n1",
    ready: bool = True,
    waiting: str | None = None,
    restarts: int = 0,
    phase: str = "Running",
    age: float = 60.0,
    deleting: bool = False,
) -> Obj:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    meta: Obj = {
        "name": name,
        "namespace": NS,
        "labels": {"controller-revision-hash": revision},
        "ownerReferences": [{"kind": "DaemonSet", "controller": True, "uid": owner, "name": "x"}],
        "creationTimestamp": iso(T0 - age),
    }
    if deleting:
        meta["deletionTimestamp"] = iso(T0)
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "startTime": iso(T0 - age),
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "c", "restartCount": restarts, "state": state}],
        },
    }


def revision(hash_: str, number: int, owner: str = UID) -> Obj:
    return {
        "metadata": {"name": f"agent-{hash_}", "labels": {"controller-revision-hash": hash_},
                     "ownerReferences": [{"kind": "DaemonSet", "controller": True, "uid": owner}]},
        "revision": number,
        "data": {},
    }  # fmt: skip


REVISIONS = (revision(OLD, 1), revision(NEW, 2))


@dataclass
class World:
    daemonsets: Sequence[Obj] = ()
    pods: Sequence[Obj] = ()
    nodes: Sequence[Obj] = ()
    revisions: Sequence[Obj] = REVISIONS
    policies: Sequence[Policy] = (GOVERNS,)
    node_infos: Sequence[NodeInfo] = ()
    name: str | None = None
    policy_errors: Mapping[str, str] = field(default_factory=dict)

    def report(self) -> StatusReport:
        return build_report(
            daemonsets=self.daemonsets,
            pods=self.pods,
            nodes=self.nodes,
            revisions=self.revisions,
            policies=self.policies,
            facts=ClusterFacts(nodes=tuple(self.node_infos)),
            now=T0,
            namespace=NS,
            name=self.name,
            policy_errors=self.policy_errors,
        )


# --- counts and the rollout state -----------------------------------------------------------------

ROLLOUT_CASES = [
    # id, DaemonSet status, expected rollout state
    ("complete", daemonset(), Rollout.COMPLETE),
    ("updating", daemonset(status=counts(updated=2, available=3)), Rollout.PROGRESSING),
    ("updated but not yet available", daemonset(status=counts(available=3)), Rollout.PROGRESSING),
    ("observedGeneration lags", daemonset(generation=3, status=counts(observed=2)), Rollout.PROGRESSING),
    ("zero desired", daemonset(status=counts(desired=0, updated=0, ready=0, available=0)), Rollout.COMPLETE),
    ("status not yet written", {**daemonset(generation=1), "status": {}}, Rollout.PROGRESSING),
]


@pytest.mark.parametrize(("ds", "state"), [c[1:] for c in ROLLOUT_CASES], ids=[c[0] for c in ROLLOUT_CASES])
def test_rollout_state_from_daemonset_status(ds: Obj, state: Rollout) -> None:
    [row] = World(daemonsets=[ds]).report().daemonsets
    assert row.rollout is state
    st = ds["status"]
    assert (row.desired, row.updated, row.ready, row.available) == (
        st.get("desiredNumberScheduled", 0),
        st.get("updatedNumberScheduled", 0),
        st.get("numberReady", 0),
        st.get("numberAvailable", 0),
    )
    assert row.to_dict()["rollout"] == state.value


def test_generation_lag_is_reported_and_keeps_until_done_waiting() -> None:
    report = World(daemonsets=[daemonset(generation=5, status=counts(observed=4))]).report()
    [row] = report.daemonsets
    assert not row.generation_observed
    assert (row.to_dict()["generation"], row.to_dict()["observedGeneration"]) == (5, 4)
    assert report.outcome() is Outcome.WAITING


def test_update_revision_is_the_newest_controllerrevision_of_this_daemonset() -> None:
    revisions = [revision(OLD, 7), revision(NEW, 9), revision("other", 12, owner="uid-other")]
    pods = [pod("a", revision=NEW), pod("b", revision=NEW), pod("c", revision=OLD)]
    [row] = World(daemonsets=[daemonset()], pods=pods, revisions=revisions).report().daemonsets
    assert row.update_revision == NEW
    assert (row.pods, row.updated_pods) == (3, 2)


def test_no_revisions_yet() -> None:
    [row] = World(daemonsets=[daemonset()], pods=[pod("a")], revisions=()).report().daemonsets
    assert row.update_revision is None
    assert (row.pods, row.updated_pods) == (1, 0)


# --- failing pods ---------------------------------------------------------------------------------


def test_failing_pods_by_reason_and_how_many_are_updated() -> None:
    guarded = parsed_policy(
        "agents", {"match": {"namespaces": [NS]}, "guard": {"maxRestarts": 5, "readyDeadlineSeconds": 120}}
    )
    pods = [
        pod("crash-1", waiting="CrashLoopBackOff", ready=False),
        pod("crash-2", waiting="CrashLoopBackOff", ready=False),
        pod("crash-old", revision=OLD, waiting="CrashLoopBackOff", ready=False),
        pod("pull", waiting="ImagePullBackOff", ready=False, phase="Pending"),
        pod("restarts", restarts=6),  # over maxRestarts 5
        pod("few-restarts", restarts=4),  # the default (3) would count it; the policy's 5 doesn't
        pod("slow", ready=False, age=200),  # past readyDeadlineSeconds 120
        pod("young", ready=False, age=30),  # still within it
        pod("failed", phase="Failed", ready=False),
        pod("on-bad-node", node="bad"),
        pod("deleting", waiting="CrashLoopBackOff", deleting=True),
        pod("someone-else", owner="uid-other", waiting="CrashLoopBackOff"),
        pod("healthy"),
    ]
    nodes = [
        builders.node("n1", ready=True, since=iso(T0 - 3600), typed=False),
        builders.node("bad", ready=False, since=iso(T0 - 10), typed=False),
    ]  # NotReady after the pod started
    [row] = World(daemonsets=[daemonset()], pods=pods, nodes=nodes, policies=[guarded]).report().daemonsets
    assert row.guard_policy == "agents"
    by_reason = {r.reason: (r.count, r.updated) for r in row.failing}
    assert by_reason == {
        "CrashLoopBackOff": (3, 2),
        "ImagePullBackOff": (1, 1),
        "restarted": (1, 1),
        "not Ready": (1, 1),
        "Failed": (1, 1),
        "node NotReady": (1, 1),
    }
    assert row.failing[0].reason == "CrashLoopBackOff"  # most frequent first
    assert (row.failing_total, row.failing_updated) == (8, 7)
    assert (row.pods, row.updated_pods) == (11, 10)  # the deleting pod and the other DaemonSet's left out
    assert row.to_dict()["failing"]["byReason"][0] == {"reason": "CrashLoopBackOff", "count": 3, "updated": 2}


def test_default_guard_policy_when_no_matching_policy_has_a_guard_section() -> None:
    pods = [pod("restarts", restarts=3), pod("slow", ready=False, age=299)]
    [row] = World(daemonsets=[daemonset()], pods=pods).report().daemonsets
    assert row.guard_policy is None
    # GuardPolicy(): maxRestarts 3, readyDeadlineSeconds 300
    assert {r.reason: r.count for r in row.failing} == {"restarted": 1}


def test_guard_policy_is_the_first_with_a_guard_section() -> None:
    a = parsed_policy("a", {"match": {"namespaces": [NS]}})
    b = parsed_policy("b", {"match": {"namespaces": [NS]}, "guard": {"maxRestarts": 10}})
    c = parsed_policy("c", {"match": {"namespaces": [NS]}, "guard": {"maxRestarts": 1}})
    name, guard = guard_policy_for([a, b, c])
    assert (name, guard.max_restarts) == ("b", 10)
    assert guard_policy_for([a])[0] is None
    [row] = (
        World(daemonsets=[daemonset()], pods=[pod("p", restarts=5)], policies=[a, b, c]).report().daemonsets
    )
    assert row.policies == ("a", "b", "c")
    assert row.failing == ()  # 5 restarts < b's 10


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("CrashLoopBackOff", "CrashLoopBackOff"),
        ("restarted 7 times", "restarted"),
        ("not Ready 400s after creation (deadline 300s)", "not Ready"),
        ("node n3 NotReady since the new pod started", "node NotReady"),
    ],
)
def test_reason_kind(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


# --- what the guard did ---------------------------------------------------------------------------

PAUSED = {
    "dsguard.io/paused": "true",
    "dsguard.io/pause-reason": "3 of 4 pods on revision newhash failing (threshold 3): 3 CrashLoopBackOff",
    "dsguard.io/paused-revision": NEW,
    "dsguard.io/paused-at": "2027-01-15T08:00:00Z",
}
ROLLED_BACK = {
    "dsguard.io/rolled-back-revision": "badhash",
    "dsguard.io/rolled-back-to": f"{NEW} (revision 3)",
    "dsguard.io/rollback-reason": "3 of 3 pods failing",
}

GUARD_CASES = [
    # id, annotations, DaemonSet overrides, rollout state, outcome
    ("paused", PAUSED, {"updated": 1, "available": 3}, Rollout.PAUSED, Outcome.FAILED),
    # a newer template replaced the paused revision: the guard resumes it, it is a new rollout
    ("paused, superseded", {**PAUSED, "dsguard.io/paused-revision": OLD}, {}, Rollout.COMPLETE, Outcome.DONE),
    ("rolled back, still on the old template", ROLLED_BACK, {}, Rollout.ROLLED_BACK, Outcome.FAILED),
    (
        "rolled back earlier, a newer template since",
        {**ROLLED_BACK, "dsguard.io/rolled-back-to": f"{OLD} (revision 1)"},
        {},
        Rollout.COMPLETE,
        Outcome.DONE,
    ),
    # the controller hasn't seen the latest spec: whether it still is rolled back is not known yet
    ("rolled back, generation not observed", ROLLED_BACK, {"generation": 4, "observed": 3},
     Rollout.PROGRESSING, Outcome.WAITING),
    ("nothing", {}, {"updated": 3}, Rollout.PROGRESSING, Outcome.WAITING),
]  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "overrides", "state", "outcome"),
    [c[1:] for c in GUARD_CASES],
    ids=[c[0] for c in GUARD_CASES],
)
def test_guard_annotations(
    annotations: Mapping[str, str], overrides: Mapping[str, Any], state: Rollout, outcome: Outcome
) -> None:
    generation = {k: v for k, v in overrides.items() if k == "generation"}
    status = counts(**{k: v for k, v in overrides.items() if k != "generation"})
    report = World(daemonsets=[daemonset(annotations=annotations, status=status, **generation)]).report()
    [row] = report.daemonsets
    assert row.rollout is state
    assert report.outcome() is outcome


def test_pause_details() -> None:
    [row] = World(daemonsets=[daemonset(annotations=PAUSED)]).report().daemonsets
    assert row.paused is not None
    assert row.to_dict()["paused"] == {
        "since": "2027-01-15T08:00:00Z",
        "reason": PAUSED["dsguard.io/pause-reason"],
        "revision": NEW,
        "current": True,
    }
    assert row.rolled_back is None


def test_rollback_details() -> None:
    [row] = World(daemonsets=[daemonset(annotations=ROLLED_BACK)]).report().daemonsets
    assert row.to_dict()["rolledBack"] == {
        "revision": "badhash",
        "to": f"{NEW} (revision 3)",
        "reason": "3 of 3 pods failing",
        "current": True,
    }
    assert row.to_dict()["paused"] is None


def test_stalled_only_for_the_update_revision() -> None:
    stalled = World(daemonsets=[daemonset(annotations={"dsguard.io/stalled-revision": NEW})]).report()
    earlier = World(daemonsets=[daemonset(annotations={"dsguard.io/stalled-revision": OLD})]).report()
    assert stalled.daemonsets[0].stalled
    assert not earlier.daemonsets[0].stalled


# --- policies -------------------------------------------------------------------------------------


def test_violations_name_policy_rule_and_message() -> None:
    capped = parsed_policy("caps", {"match": {"namespaces": [NS]}, "rollout": {"maxUnavailable": 1}})
    fine = parsed_policy("fine", {"match": {"namespaces": [NS]}})
    nodes = [NodeInfo.from_node({"metadata": {"name": f"n{i}"}}) for i in range(4)]
    world = World(daemonsets=[daemonset(max_unavailable=3)], policies=[capped, fine], node_infos=nodes)
    [row] = world.report().daemonsets
    assert row.policies == ("caps", "fine")
    [v] = row.violations
    assert (v.policy, v.rule, v.severity) == ("caps", "rollout", "violation")
    assert "maxUnavailable" in v.message and "3" in v.message
    within = World(daemonsets=[daemonset(max_unavailable=1)], policies=[capped], node_infos=nodes)
    assert within.report().daemonsets[0].violations == ()


def test_ungoverned_daemonsets_are_left_out_unless_named() -> None:
    other = daemonset("other", uid="uid-other", namespace="kube-system")
    world = World(daemonsets=[daemonset(), other])
    assert [d.name for d in world.report().daemonsets] == ["agent"]
    world.name = "other"
    [row] = world.report().daemonsets
    assert (row.name, row.governed, row.policies, row.violations) == ("other", False, (), ())
    assert row.to_dict()["governed"] is False


def test_named_daemonset_that_does_not_exist_gives_no_rows() -> None:
    assert World(daemonsets=[daemonset()], name="nope").report().daemonsets == ()


def test_selector_match_on_daemonset_labels() -> None:
    by_label = parsed_policy("by-label", {"match": {"selector": {"matchLabels": {"tier": "node"}}}})
    a = daemonset("a", uid="ua", labels={"tier": "node"})
    b = daemonset("b", uid="ub", labels={"tier": "app"})
    assert [d.name for d in World(daemonsets=[b, a], policies=[by_label]).report().daemonsets] == ["a"]


# --- the whole report -----------------------------------------------------------------------------


def test_outcome_over_several_daemonsets() -> None:
    done = daemonset("a", uid="ua")
    moving = daemonset("b", uid="ub", status=counts(updated=1))
    paused = daemonset("c", uid="uc", annotations=PAUSED)
    assert World(daemonsets=[done]).report().outcome() is Outcome.DONE
    assert World(daemonsets=[done, moving]).report().outcome() is Outcome.WAITING
    assert World(daemonsets=[done, moving, paused]).report().outcome() is Outcome.FAILED
    assert World(daemonsets=[]).report().outcome() is Outcome.DONE  # the command refuses it (exit 2)


def test_a_pause_the_controller_has_not_caught_up_with_is_not_a_failure_yet() -> None:
    """`kubectl apply` of a fix to a paused DaemonSet: until the controller has seen the new
    generation its newest revision is still the paused one; --until-done must wait, not fail."""
    applied_fix = daemonset("c", uid="uc", annotations=PAUSED, generation=3, status=counts(observed=2))
    report = World(daemonsets=[applied_fix]).report()
    assert report.daemonsets[0].rollout is Rollout.PAUSED  # shown as it stands
    assert report.outcome() is Outcome.WAITING
    seen = daemonset("c", uid="uc", annotations=PAUSED, generation=3, status=counts(observed=3))
    assert World(daemonsets=[seen]).report().outcome() is Outcome.FAILED


def test_schema() -> None:
    world = World(
        daemonsets=[daemonset("b", uid="ub"), daemonset("a", uid="ua")],
        policy_errors={"broken": "spec.guard.action: 'Explode' is not one of Pause, Rollback"},
    )
    doc = json.loads(json.dumps(world.report().to_dict()))  # plain JSON types only
    assert doc["apiVersion"] == "dsguard.io/v1alpha1"
    assert doc["kind"] == "DaemonSetStatusReport"
    assert doc["generatedAt"] == iso(T0)
    assert (doc["namespace"], doc["policySource"]) == (NS, "cluster")
    assert doc["policyErrors"] == [
        {"policy": "broken", "error": "spec.guard.action: 'Explode' is not one of Pause, Rollback"}
    ]
    assert [d["name"] for d in doc["daemonsets"]] == ["a", "b"]  # sorted
    assert list(doc["daemonsets"][0]) == [
        "namespace", "name", "governed", "policies", "guardPolicy", "rollout", "generation",
        "observedGeneration", "desired", "updated", "ready", "available", "updateRevision", "pods",
        "failing", "paused", "rolledBack", "stalled", "violations", "waves",
    ]  # fmt: skip
    assert list(doc["daemonsets"][0]["failing"]) == ["total", "updated", "byReason"]
    assert list(doc["daemonsets"][0]["pods"]) == ["total", "updated"]


def test_content_ignores_only_the_clock() -> None:
    a = World(daemonsets=[daemonset()]).report()
    b = build_report(
        daemonsets=[daemonset()], pods=[], nodes=[], revisions=REVISIONS, policies=[GOVERNS],
        facts=ClusterFacts(), now=T0 + 30, namespace=NS,
    )  # fmt: skip
    c = World(daemonsets=[daemonset(status=counts(ready=3))]).report()
    assert a.to_dict() != b.to_dict()
    assert a.content() == b.content()
    assert a.content() != c.content()


def test_wave_status_shows_the_waves_bake_and_approval() -> None:
    from dsguard.annotations import BAKE_STARTED_AT, WAVE, WAVES_REVISION
    from dsguard.pod_health import PodView
    from dsguard.policy import Approval, WavesPolicy
    from dsguard.status_report import wave_status

    zone = "topology.kubernetes.io/zone"
    labels = {"a-0": {zone: "a"}, "a-1": {zone: "a"}, "b-0": {zone: "b"}}

    def view(node: str, revision: str) -> PodView:
        return PodView("ns", f"p-{node}", "uid", node, revision, "Running", True, 0, (), T0 - 99, T0 - 99,
                       False, f"u-{node}", T0 - 90)  # fmt: skip

    pods = [view("a-0", "new"), view("a-1", "old"), view("b-0", "old")]
    waves = WavesPolicy(canary=1, group_by=zone, bake_seconds=60, approval=Approval.MANUAL)
    baking = {WAVES_REVISION: "new", WAVE: "0", BAKE_STARTED_AT: "2027-01-15T08:00:00Z"}
    began = datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()
    w = wave_status(baking, "new", waves, pods, labels, 0, began + 20.5)
    assert w is not None
    assert (w.index, w.bake_left, w.waiting) == (0, 40, "baking, 40s left")
    assert [(r.name, r.nodes, r.updated, r.available) for r in w.waves] == [
        ("canary", 1, 1, 1),
        (f"{zone}=a", 1, 0, 0),
        (f"{zone}=b", 1, 0, 0),
    ]
    done = wave_status(baking, "new", waves, pods, labels, 0, began + 61)
    assert done is not None and done.waiting.startswith("approval: dsguard promote (wave 2/3")
    assert wave_status(baking, "other", waves, pods, labels, 0, began) is None, "another revision's"
    assert wave_status({}, "new", waves, pods, labels, 0, began) is None
