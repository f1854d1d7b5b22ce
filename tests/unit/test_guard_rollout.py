"""The guard's pure core: which pods fail, the threshold, the decision, the patches."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsguard.annotations import (
    BAKE_STARTED_AT,
    ORIGINAL_STRATEGY,
    PAUSE_MARKS,
    PAUSE_REASON,
    PAUSED,
    PAUSED_AT,
    PAUSED_REVISION,
    PROMOTED_WAVE,
    ROLLED_BACK_REVISION,
    STALLED_REVISION,
    WAVE,
    WAVE_ANNOTATIONS,
    WAVE_STARTED_AT,
    WAVES_COMPLETED,
    WAVES_REVISION,
    WAVES_TAKEOVER,
)
from dsguard.pod_health import NodeHealth, PodView, failure_reason
from dsguard.policy import GuardAction, GuardPolicy
from dsguard.revisions import Revision
from guard import actions
from guard.actions import ResumeError, pause_patch, resume_patch, rollback_patch
from guard.rollout import DaemonSetState, Step, decide, threshold_count
from guard.wave_actions import (
    advance_patch,
    bake_patch,
    complete_patch,
    promote_patch,
    start_patch,
)
from tests.support.builders import daemonset

T0 = 1_800_000_000.0  # "now" in these tests
GUARD = GuardPolicy(
    failure_threshold=2, max_restarts=3, ready_deadline_seconds=300, progress_deadline_seconds=600
)


def iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_obj(
    name: str,
    *,
    revision: str = "new",
    node: str = "n1",
    ready: bool = True,
    restarts: int = 0,
    waiting: str | None = None,
    phase: str = "Running",
    age: float = 60,
    owner: str = "ds-uid",
    deleting: bool = False,
    started: bool = True,
) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "labels": {"controller-revision-hash": revision},
        "creationTimestamp": iso(T0 - age),
        "ownerReferences": [{"kind": "DaemonSet", "name": "agent", "uid": owner, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = iso(T0)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": "c", "restartCount": restarts, "state": state}],
    }
    if started:
        status["startTime"] = iso(T0 - age + 1)
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


def pod(**kw: Any) -> PodView:
    view = PodView.from_pod(pod_obj(kw.pop("name", "p"), **kw))
    assert view is not None
    return view


@pytest.mark.parametrize(
    ("kw", "node", "reason"),
    [
        ({}, None, None),
        ({"waiting": "CrashLoopBackOff", "ready": False}, None, "CrashLoopBackOff"),
        ({"waiting": "ImagePullBackOff", "ready": False}, None, "ImagePullBackOff"),
        ({"waiting": "ErrImagePull", "ready": False}, None, "ErrImagePull"),
        ({"waiting": "CreateContainerConfigError", "ready": False}, None, "CreateContainerConfigError"),
        ({"waiting": "ContainerCreating", "ready": False}, None, None),  # normal start-up
        ({"phase": "Failed", "ready": False}, None, "Failed"),
        ({"restarts": 2}, None, None),
        ({"restarts": 3}, None, "restarted 3 times"),  # Ready between crashes still counts
        ({"ready": False, "age": 299}, None, None),
        ({"ready": False, "age": 301}, None, "not Ready 301s after creation (deadline 300s)"),
        # node went NotReady after the pod started there: the agent took its node down
        ({"age": 60}, NodeHealth("n1", False, T0 - 30), "node n1 NotReady since the new pod started"),
        # node was NotReady before the pod came: not the pod's doing
        ({"age": 60}, NodeHealth("n1", False, T0 - 600), None),
        # a node that joined mid-rollout and has not posted its status yet gets its pod at once
        ({"age": 1}, NodeHealth.from_node({"metadata": {"name": "n1"}}), None),
        # a kubelet that posts NotReady after the pod was made, but never started it: not the pod
        ({"age": 5, "ready": False, "started": False}, NodeHealth("n1", False, T0 - 2), None),
        # a node cordoned, scaled down or shut down goes NotReady for that, not for the new pod
        ({"age": 60}, NodeHealth("n1", False, T0 - 30, retiring=True), None),
        # not Ready past the deadline on a node that was NotReady before it: the node's doing
        ({"ready": False, "age": 400}, NodeHealth("n1", False, T0 - 600), None),
        ({"ready": False, "age": 400, "started": False}, NodeHealth("n1", False, T0 - 2), None),
        (
            {"ready": False, "age": 400},
            NodeHealth("n1", True, T0 - 600),
            "not Ready 400s after creation (deadline 300s)",
        ),
        # a condition with no time, on a node that had reported: still counted against the pod
        ({"age": 60}, NodeHealth("n1", False, None), "node n1 NotReady since the new pod started"),
        ({"waiting": "CrashLoopBackOff", "deleting": True}, None, None),
    ],
)
def test_failure_reason(kw: dict[str, Any], node: NodeHealth | None, reason: str | None) -> None:
    assert failure_reason(pod(**kw), node, GUARD, T0) == reason


def test_pods_not_owned_by_a_daemonset_are_ignored() -> None:
    obj = pod_obj("p")
    obj["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "uid": "x", "controller": True}]
    assert PodView.from_pod(obj) is None


@pytest.mark.parametrize(
    ("threshold", "updated", "count"),
    [(3, 20, 3), ("5%", 20, 1), ("10%", 25, 3), ("50%", 3, 2), ("1%", 0, 1), ("100%", 7, 7)],
)
def test_threshold_count(threshold: int | str, updated: int, count: int) -> None:
    assert threshold_count(threshold, updated) == count


ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 0}}
CONTAINER = {"name": "c", "image": "agent:2"}
ON_DELETE_STRATEGY = {"type": "OnDelete"}


def ds_state(
    *,
    annotations: dict[str, str] | None = None,
    strategy: dict[str, Any] | None = None,
    desired: int = 5,
    updated: int = 2,
    available: int = 4,
    generation: int = 2,
    observed: int = 2,
) -> DaemonSetState:
    obj = daemonset(
        "agent", "ns", uid="ds-uid", resource_version="42", generation=generation,
        annotations=annotations or {}, update_strategy=strategy or ROLLING, containers=[CONTAINER],
        status={"observedGeneration": observed, "desiredNumberScheduled": desired,
                "updatedNumberScheduled": updated, "numberAvailable": available, "numberReady": available},
    )  # fmt: skip
    return DaemonSetState.from_object(obj)


def revision(name: str, number: int, image: str) -> Revision:
    template = {
        "metadata": {"labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "c", "image": image}]},
    }
    return Revision(
        f"agent-{name}", name, number, "ds-uid", {"spec": {"template": {**template, "$patch": "replace"}}}
    )


OLD = revision("old", 1, "agent:1")
NEW = revision("new", 2, "agent:2")


def run_decide(
    ds: DaemonSetState,
    pods: list[PodView],
    *,
    guard: GuardPolicy = GUARD,
    revisions: tuple[Revision, ...] = (OLD, NEW),
    progress_since: float = T0,
) -> Step:
    return decide(ds, revisions, pods, {}, guard, now=T0, progress_since=progress_since).step


CRASHING = [pod(name=f"p{i}", waiting="CrashLoopBackOff", ready=False) for i in range(2)]


def test_decisions() -> None:
    healthy = [pod(name="h1"), pod(name="h2", revision="old")]
    assert run_decide(ds_state(), healthy) is Step.NONE
    assert run_decide(ds_state(), CRASHING) is Step.PAUSE
    assert run_decide(ds_state(), CRASHING[:1]) is Step.NONE  # below the threshold
    # failing pods on the OLD revision are not this rollout's doing
    assert (
        run_decide(
            ds_state(), [pod(name=f"o{i}", revision="old", waiting="CrashLoopBackOff") for i in range(3)]
        )
        is Step.NONE
    )
    rollback = GuardPolicy(failure_threshold=2, action=GuardAction.ROLLBACK)
    assert run_decide(ds_state(), CRASHING, guard=rollback) is Step.ROLLBACK
    # a first revision is a creation: nothing to pause or undo
    assert run_decide(ds_state(), CRASHING, revisions=(NEW,)) is Step.NONE
    # the controller hasn't observed the newest spec yet
    assert run_decide(ds_state(generation=3, observed=2), CRASHING) is Step.NONE


def test_once_per_revision() -> None:
    paused = ds_state(
        annotations={PAUSED: "true", PAUSED_REVISION: "new", ORIGINAL_STRATEGY: "{}"},
        strategy={"type": "OnDelete"},
    )
    assert run_decide(paused, CRASHING) is Step.NONE
    # a new template after the pause is a new rollout
    newer = Revision("agent-newer", "newer", 3, "ds-uid", {})
    assert run_decide(paused, CRASHING, revisions=(OLD, NEW, newer)) is Step.RESUME
    rolled = ds_state(annotations={ROLLED_BACK_REVISION: "new"})
    assert (
        run_decide(rolled, CRASHING, guard=GuardPolicy(failure_threshold=2, action=GuardAction.ROLLBACK))
        is Step.NONE
    )


def test_stalled_once() -> None:
    ds = ds_state(updated=2, desired=5)
    assert run_decide(ds, [], progress_since=T0 - 599) is Step.NONE
    assert run_decide(ds, [], progress_since=T0 - 600) is Step.STALLED
    assert (
        run_decide(ds_state(annotations={STALLED_REVISION: "new"}), [], progress_since=T0 - 6000) is Step.NONE
    )
    assert run_decide(ds_state(updated=5, desired=5, available=5), [], progress_since=T0 - 6000) is Step.NONE


def test_pause_and_resume_patches_round_trip() -> None:
    ds = ds_state()
    patch = actions.pause_patch(ds, "new", "2 of 2 pods failing", "2027-01-15T08:00:00Z")
    assert patch["spec"]["updateStrategy"] == {"type": "OnDelete", "rollingUpdate": None}
    ann = patch["metadata"]["annotations"]
    assert ann[PAUSED] == "true" and ann[PAUSED_REVISION] == "new"
    assert json.loads(ann[ORIGINAL_STRATEGY]) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 0},
    }
    assert patch["metadata"]["resourceVersion"] == "42"  # precondition: no double action

    paused = ds_state(annotations={k: v for k, v in ann.items()}, strategy={"type": "OnDelete"})
    resume = actions.resume_patch(paused)
    assert resume["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 0},
    }
    assert all(v is None for v in resume["metadata"]["annotations"].values())
    with pytest.raises(actions.ResumeError, match="not paused by dsguard"):
        actions.resume_patch(ds)
    broken = ds_state(annotations={PAUSED: "true", ORIGINAL_STRATEGY: "{nope"})
    with pytest.raises(actions.ResumeError, match="is not JSON"):
        actions.resume_patch(broken)


def test_rollback_patch_is_the_revision_data_plus_our_record() -> None:
    patch = actions.rollback_patch(ds_state(), "new", OLD, "2 failing")
    assert patch["spec"]["template"] == OLD.data["spec"]["template"]
    assert patch["metadata"]["annotations"][ROLLED_BACK_REVISION] == "new"
    assert not actions.template_matches(ds_state(), OLD)
    assert actions.template_matches(ds_state(), NEW)


# -- wave rollouts (spec.guard.waves) -------------------------------------------------------------

WAVING = {
    WAVES_REVISION: "new",
    WAVE: "1",
    ORIGINAL_STRATEGY: json.dumps(ROLLING, sort_keys=True, separators=(",", ":")),
}


def test_a_failing_wave_rollout_is_paused_under_on_delete() -> None:
    ds = ds_state(annotations=dict(WAVING), strategy=ON_DELETE_STRATEGY)
    assert run_decide(ds, CRASHING) is Step.PAUSE
    # the user's own OnDelete is left alone, as before
    assert run_decide(ds_state(strategy=ON_DELETE_STRATEGY), CRASHING) is Step.NONE
    # a completed wave rollout is the user's OnDelete again
    done = {**WAVING, WAVES_COMPLETED: "new"}
    assert run_decide(ds_state(annotations=done, strategy=ON_DELETE_STRATEGY), CRASHING) is Step.NONE


def test_pausing_a_wave_rollout_keeps_the_users_strategy() -> None:
    ds = ds_state(annotations=dict(WAVING), strategy=ON_DELETE_STRATEGY)
    patch = pause_patch(ds, "new", "2 failing", iso(T0))
    assert ORIGINAL_STRATEGY not in patch["metadata"]["annotations"]
    assert "spec" not in patch
    assert patch["metadata"]["annotations"][PAUSED] == "true"


def test_resuming_a_wave_rollout_only_lifts_the_pause() -> None:
    paused = {**WAVING, PAUSED: "true", PAUSED_REVISION: "new", PAUSE_REASON: "r", PAUSED_AT: iso(T0)}
    patch = resume_patch(ds_state(annotations=paused, strategy=ON_DELETE_STRATEGY))
    assert patch == {
        "metadata": {"resourceVersion": "42", "annotations": dict.fromkeys(PAUSE_MARKS)},
    }


def test_rolling_back_a_wave_rollout_restores_the_users_strategy() -> None:
    ds = ds_state(annotations=dict(WAVING), strategy=ON_DELETE_STRATEGY)
    patch = rollback_patch(ds, "new", OLD, "2 failing")
    assert patch["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": ROLLING["rollingUpdate"],
    }
    annotations = patch["metadata"]["annotations"]
    assert all(annotations[a] is None for a in WAVE_ANNOTATIONS)
    assert annotations[ORIGINAL_STRATEGY] is None


def test_wave_patches() -> None:
    rolling = ds_state(strategy=ROLLING)
    taken = start_patch(rolling, "new", 3, iso(T0))
    assert taken["spec"]["updateStrategy"] == {"type": "OnDelete", "rollingUpdate": None}
    assert json.loads(taken["metadata"]["annotations"][ORIGINAL_STRATEGY]) == ROLLING
    assert taken["metadata"]["annotations"][WAVES_TAKEOVER] == "3"
    assert taken["metadata"]["annotations"][WAVE] == "0"
    assert taken["metadata"]["resourceVersion"] == "42"
    held = start_patch(ds_state(annotations=dict(WAVING), strategy=ON_DELETE_STRATEGY), "new", 0, iso(T0))
    assert "spec" not in held and ORIGINAL_STRATEGY not in held["metadata"]["annotations"]
    assert held["metadata"]["annotations"][WAVES_TAKEOVER] is None

    done = complete_patch(ds_state(annotations=dict(WAVING), strategy=ON_DELETE_STRATEGY), "new")
    assert done["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": ROLLING["rollingUpdate"],
    }
    assert done["metadata"]["annotations"][WAVES_COMPLETED] == "new"
    assert done["metadata"]["annotations"][WAVES_REVISION] is None
    with pytest.raises(ResumeError):
        complete_patch(ds_state(annotations={WAVES_REVISION: "new"}, strategy=ON_DELETE_STRATEGY), "new")

    assert advance_patch(rolling, 2, iso(T0))["metadata"]["annotations"] == {
        WAVE: "2",
        WAVE_STARTED_AT: iso(T0),
        BAKE_STARTED_AT: None,
    }
    assert bake_patch(rolling, iso(T0))["metadata"]["annotations"] == {BAKE_STARTED_AT: iso(T0)}
    assert promote_patch(rolling, 1)["metadata"]["annotations"] == {PROMOTED_WAVE: "1"}
