"""The guard's pending alerts (dsguard.io/alerts-pending): written with the action, cleared once
settled, resent by a guard that did not send them. A Guard and its Outbox against the fake
apiserver of tests.support.guard_fakes (merge patches with resourceVersion preconditions, JSON
patches with 422 on a failed `test`), plus the pure helpers in guard.actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from dsguard.annotations import ALERTS_PENDING, PAUSED
from dsguard.policy import GuardAction, GuardPolicy, Match, Policy
from guard import actions
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert, AlertKind, FailingPod
from guard.outbox import OUTBOX_MEMORY, Outbox
from guard.rollout import DaemonSetState
from guard.store import Tracked
from tests.support.guard_fakes import (
    T0,
    FakeApiserver,
    Harness,
    ds_obj,
    ds_with_pending,
    foreign_alert,
    pending,
    revision_obj,
)

JSON_PATCH = "application/json-patch+json"


def leader_harness(*objs: dict[str, Any], **kw: Any) -> Harness:
    h = Harness(*objs, **kw)
    h.advance(0)
    return h


# --- the action's patch carries its alert ------------------------------------------------------


async def test_pause_patch_carries_the_alert_it_sends() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    [patch] = h.api.patches
    assert patch["metadata"]["resourceVersion"] == "10"  # the version whose (empty) list it extends
    [entry] = json.loads(patch["metadata"]["annotations"][ALERTS_PENDING])
    [alert] = h.alerts
    assert alert.kind is AlertKind.PAUSED
    assert entry == alert.to_json()
    assert Alert.from_json(entry) == alert


async def test_rollback_patch_carries_the_alert_it_sends() -> None:
    obj = ds_obj()
    obj["spec"]["template"] = {"spec": {"containers": [{"name": "c", "image": "bad"}]}}
    rollback = Policy(
        name="agents", match=Match(), guard=GuardPolicy(failure_threshold=2, action=GuardAction.ROLLBACK)
    )
    h = leader_harness(obj, policies=[rollback])
    h.rollout(failing=2)
    await h.process()
    [patch] = h.api.patches
    assert h.api.content_types == [actions.STRATEGIC_MERGE_PATCH]
    assert patch["metadata"]["resourceVersion"] == "10"
    [alert] = h.alerts
    assert alert.kind is AlertKind.ROLLED_BACK
    assert json.loads(patch["metadata"]["annotations"][ALERTS_PENDING]) == [alert.to_json()]


async def test_stalled_patch_is_preconditioned_and_carries_the_alert() -> None:
    slow = Policy(name="agents", match=Match(), guard=GuardPolicy(progress_deadline_seconds=60))
    h = leader_harness(policies=[slow])
    h.rollout(failing=0)
    await h.process()
    assert h.api.patches == []
    h.now = T0 + 61  # no progress for the deadline
    await h.process()
    [patch] = h.api.patches
    assert patch["metadata"]["resourceVersion"] == "10"  # appends to this version's list
    [alert] = h.alerts
    assert alert.kind is AlertKind.STALLED
    assert json.loads(patch["metadata"]["annotations"][ALERTS_PENDING]) == [alert.to_json()]


async def test_resume_patch_appends_its_alert_to_the_ones_still_pending() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    h.watch()  # paused, its alert still pending (the sinks have not settled it)
    h.store.revision_event("ADDED", revision_obj("fixed", 3))
    h.api.bump("agent", spec=True)
    h.watch()
    await h.process()
    paused, resumed = h.alerts
    assert resumed.kind is AlertKind.RESUMED and resumed.revision == "bad"
    patch = h.api.patches[-1]
    assert patch["metadata"]["annotations"][PAUSED] is None
    assert json.loads(patch["metadata"]["annotations"][ALERTS_PENDING]) == [
        paused.to_json(),
        resumed.to_json(),
    ]
    assert [e["kind"] for e in pending(h)] == ["paused", "resumed"]


async def test_an_action_refused_with_409_sends_no_alert_and_records_none() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    h.api.bump("agent")
    await h.process()
    assert h.alerts == [] and pending(h) == []


# --- settled alerts are cleared ------------------------------------------------------------------


async def test_a_settled_alert_is_cleared_with_a_json_patch_that_tests_the_exact_value() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    [alert] = h.alerts
    h.outbox.alert_settled(alert)  # delivered before the watch brought our own patch
    await h.process()
    assert len(h.api.patches) == 1  # the annotation as seen has no such entry yet: wait
    h.watch()
    raw = h.api.get()["metadata"]["annotations"][ALERTS_PENDING]
    await h.process()
    assert h.api.content_types[-1] == JSON_PATCH
    path = "/metadata/annotations/dsguard.io~1alerts-pending"
    assert h.api.patches[-1] == [{"op": "test", "path": path, "value": raw}, {"op": "remove", "path": path}]
    assert ALERTS_PENDING not in h.api.get()["metadata"]["annotations"]
    assert h.api.get()["metadata"]["annotations"][PAUSED] == "true"
    await h.process()  # the watch has not brought the cleared version yet: nothing more
    h.watch()
    await h.process()
    assert len(h.api.patches) == 2
    assert h.alerts == [alert]  # never resent
    assert h.gauge("dsguard_guard_alerts_pending") == 0


async def test_a_clear_refused_because_the_value_changed_waits_for_the_next_version() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    h.watch()
    [alert] = h.alerts
    # someone adds an entry behind the guard's view (a test op on the old value must fail)
    other = foreign_alert(kind=AlertKind.STALLED).to_json()
    annotations = h.api.objs["agent"]["metadata"]["annotations"]
    annotations[ALERTS_PENDING] = json.dumps([*json.loads(annotations[ALERTS_PENDING]), other])
    h.api.bump("agent")
    h.outbox.alert_settled(alert)
    await h.process()
    assert h.api.content_types[-1] == JSON_PATCH
    assert len(pending(h)) == 2  # refused: 422
    await h.process()
    assert len(h.api.patches) == 2  # not again against the same version
    h.watch()
    await h.process()  # now: our alert goes, the other is resent and stays until it settles
    assert len(h.api.patches) == 3
    assert h.api.patches[-1][1]["op"] == "replace"
    assert pending(h) == [other]
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED, AlertKind.STALLED]


async def test_a_settled_alert_whose_daemonset_is_gone_or_never_shows_up_is_forgotten() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    [alert] = h.alerts
    h.outbox.alert_settled(alert)
    h.advance(OUTBOX_MEMORY + 1)  # the watch never brought our patch (someone overwrote it)
    await h.process()
    assert h.outbox._to_clear == {}
    h.store.daemonset_event("DELETED", h.api.get())
    await h.process()
    assert h.outbox._submitted == {} and h.outbox._pending == {}


async def test_the_alert_of_a_resume_by_someone_else_is_best_effort_not_pending() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    h.watch()
    h.outbox.alert_settled(h.alerts[0])
    await h.process()
    h.watch()
    obj = h.api.get()
    obj["metadata"]["annotations"] = {}
    obj["metadata"]["resourceVersion"] = "99"
    h.store.daemonset_event("MODIFIED", obj)  # `dsguard resume` by a person
    resumed = h.alerts[-1]
    assert resumed.kind is AlertKind.RESUMED
    assert not h.outbox.will_resend(resumed)
    patches = len(h.api.patches)
    h.outbox.alert_settled(resumed)
    await h.process()
    assert len(h.api.patches) == patches and h.outbox._to_clear.get("uid-1", {}) == {}


# --- pending alerts this process did not send are resent --------------------------------------


async def test_a_pending_alert_another_guard_wrote_is_resent_once_then_cleared() -> None:
    alert = foreign_alert()
    h = leader_harness(ds_with_pending(alert.to_json()))
    await h.process()
    assert h.alerts == [alert]
    assert h.sent_with == [POLICY_GUARD]
    assert h.metrics.registry.get_sample_value("dsguard_guard_alerts_resent_total") == 1
    assert h.gauge("dsguard_guard_alerts_pending") == 1
    assert h.outbox.will_resend(alert)
    await h.process()
    h.watch()
    await h.process()
    assert h.alerts == [alert]  # once
    h.outbox.alert_settled(alert)
    await h.process()
    assert pending(h) == []
    h.watch()
    await h.process()
    assert h.gauge("dsguard_guard_alerts_pending") == 0
    assert h.metrics.registry.get_sample_value("dsguard_guard_alerts_resent_total") == 1


POLICY_GUARD = GuardPolicy(failure_threshold=2)  # the Harness's POLICY.guard


async def test_a_pending_alert_without_a_guard_policy_goes_to_the_events() -> None:
    h = leader_harness(ds_with_pending(foreign_alert().to_json()), policies=[Policy(name="rules-only")])
    await h.process()
    assert h.alerts == [foreign_alert()]
    assert h.sent_with == [GuardPolicy()]  # no alert sinks: the Event only


async def test_the_guards_own_pending_alerts_are_not_resent() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    h.watch()  # our pause, its alert pending (not settled yet)
    h.advance(OUTBOX_MEMORY * 3)  # still pending: remembered however long delivery takes
    await h.process()
    await h.process()
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED]
    assert h.metrics.registry.get_sample_value("dsguard_guard_alerts_resent_total") == 0


async def test_a_follower_neither_resends_nor_clears() -> None:
    alert = foreign_alert()
    h = leader_harness(ds_with_pending(alert.to_json()))
    h.leading = False
    await h.process()
    assert h.alerts == [] and h.api.patches == []
    assert h.gauge("dsguard_guard_alerts_pending") == 1  # it still counts what it sees
    h.leading = True  # elected
    await h.process()
    assert h.alerts == [alert]
    h.outbox.alert_settled(alert)
    h.leading = False  # and lost the lease before clearing
    await h.process()
    assert h.api.patches == [] and len(pending(h)) == 1
    h.leading = True
    await h.process()
    assert pending(h) == []
    assert h.alerts == [alert]


async def test_nothing_is_resent_before_every_watch_has_listed() -> None:
    alert = foreign_alert()
    h = leader_harness(ds_with_pending(alert.to_json()))
    h.listed = False  # the policies may not be known yet: the alert would miss its sinks
    await h.process()
    assert h.alerts == []
    h.listed = True
    await h.process()
    assert h.alerts == [alert]


async def test_malformed_entries_are_logged_once_and_cleared(caplog: pytest.LogCaptureFixture) -> None:
    good = foreign_alert().to_json()
    elsewhere = foreign_alert(uid="uid-other").to_json()  # copied from another DaemonSet
    h = leader_harness(ds_with_pending(good, {"kind": "paused"}, elsewhere))
    with caplog.at_level(logging.ERROR, "dsguard.guard"):
        await h.process()
        await h.process()  # the watch has not brought the cleared version: no second patch, no log
    assert len(h.api.patches) == 1 and h.api.content_types == [JSON_PATCH]
    assert pending(h) == [good]  # the good one stays until it settles
    assert h.alerts == [foreign_alert()]
    errors = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(errors) == 2, errors
    assert "unsupported alert version None" in errors[0]
    assert "about DaemonSet uid uid-other" in errors[1]
    h.watch()
    await h.process()
    assert len(h.api.patches) == 1


async def test_a_pending_annotation_that_is_not_a_list_is_removed(caplog: pytest.LogCaptureFixture) -> None:
    h = leader_harness(ds_with_pending(raw="{not json"))
    with caplog.at_level(logging.ERROR, "dsguard.guard"):
        await h.process()
        await h.process()
    assert h.api.patches[0][1] == {"op": "remove", "path": "/metadata/annotations/dsguard.io~1alerts-pending"}
    assert len(h.api.patches) == 1 and h.alerts == []
    assert ALERTS_PENDING not in h.api.get()["metadata"]["annotations"]
    assert len([r for r in caplog.records if "not a JSON list" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # deep enough to exhaust the JSON parser's recursion
        json.dumps(["x" * 1000] * 200),  # far over what the guard ever writes
    ],
    ids=["deeply-nested", "oversized"],
)
async def test_a_hostile_pending_annotation_is_removed_not_a_crash(raw: str) -> None:
    """Anyone who may annotate the DaemonSet writes this annotation: neither the leader nor a
    follower may crash on it (a crash would stop the guard for every DaemonSet)."""
    follower = leader_harness(ds_with_pending(raw=raw))
    follower.leading = False
    await follower.process()
    h = leader_harness(ds_with_pending(raw=raw))
    await h.process()
    assert h.api.patches[0][1] == {"op": "remove", "path": "/metadata/annotations/dsguard.io~1alerts-pending"}
    assert ALERTS_PENDING not in h.api.get()["metadata"]["annotations"]


async def test_one_daemonset_failing_to_evaluate_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = leader_harness(ds_with_pending(raw="[]"))

    async def boom(uid: str) -> bool:
        raise KeyError("an object the guard did not expect")

    monkeypatch.setattr(h.guard, "_evaluate_and_act", boom)
    await h.process()  # logged and counted, not raised: the loop goes on with the other DaemonSets
    assert h.guard.metrics.action_errors.labels("evaluate")._value.get() == 1


async def test_a_refused_clear_other_than_a_conflict_is_tried_again() -> None:
    alert = foreign_alert()
    h = leader_harness(ds_with_pending(alert.to_json()))
    await h.process()
    h.outbox.alert_settled(alert)
    h.api.fail_with = 500
    await h.process()
    assert len(pending(h)) == 1
    await h.process()  # the next evaluation, same version
    assert pending(h) == []


# --- Outbox.will_resend and the dispatcher's view ---------------------------------------------------


async def test_will_resend_is_true_for_pending_alerts_only() -> None:
    h = leader_harness()
    h.rollout(failing=2)
    await h.process()
    [alert] = h.alerts
    assert h.outbox.will_resend(alert)
    assert not h.outbox.will_resend(foreign_alert(uid="uid-9"))


# --- the Outbox on its own ----------------------------------------------------------------------


class OutboxRig:
    """An Outbox against the fake apiserver, the DaemonSet handed in as the guard would."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.api = FakeApiserver(obj)
        self.marked: list[str] = []
        self.resent: list[Alert] = []
        self.mono = 1000.0
        self.metrics = GuardMetrics()
        self.outbox = Outbox(
            patcher=self.api, mark=self.marked.append, metrics=self.metrics, monotonic=lambda: self.mono
        )

    def state(self) -> DaemonSetState:
        return DaemonSetState.from_object(self.api.get())

    async def sync(self, *, patched: bool = False, listed: bool = True) -> None:
        ds = self.state()

        def resend(on: DaemonSetState, alert: Alert) -> None:
            assert on == ds
            self.resent.append(alert)

        await self.outbox.sync(ds.uid, ds, patched=patched, resend=resend if listed else None)


async def test_outbox_takes_settled_alerts_it_has_pending_and_marks_their_daemonset() -> None:
    alert = foreign_alert()
    rig = OutboxRig(ds_with_pending(alert.to_json()))
    rig.outbox.alert_settled(alert)  # not one it sent or resent: nothing to take off
    assert rig.marked == [] and rig.outbox._to_clear == {}
    assert not rig.outbox.will_resend(alert)
    rig.outbox.sent(alert)
    assert rig.outbox.will_resend(alert)
    rig.outbox.alert_settled(alert)
    assert rig.marked == ["uid-1"]
    await rig.sync(patched=True)  # the round the guard patched in: the value it saw is stale
    assert rig.api.patches == []
    await rig.sync()
    path = "/metadata/annotations/dsguard.io~1alerts-pending"
    raw = json.dumps([alert.to_json()])
    assert rig.api.patches == [[{"op": "test", "path": path, "value": raw}, {"op": "remove", "path": path}]]
    assert rig.resent == []  # its own: never sent again


async def test_outbox_resends_another_guards_alert_once_every_watch_has_listed() -> None:
    alert = foreign_alert()
    rig = OutboxRig(ds_with_pending(alert.to_json()))
    await rig.sync(listed=False)
    assert rig.resent == [] and not rig.outbox.will_resend(alert)
    await rig.sync()
    await rig.sync()
    assert rig.resent == [alert] and rig.outbox.will_resend(alert)
    assert rig.metrics.registry.get_sample_value("dsguard_guard_alerts_resent_total") == 1
    assert rig.api.patches == []  # pending until it settles


async def test_outbox_counts_what_it_sees_and_forgets_daemonsets_that_are_gone() -> None:
    rig = OutboxRig(ds_with_pending(foreign_alert().to_json(), foreign_alert(revision="other").to_json()))
    ds = rig.state()
    rig.outbox.count(ds.uid, ds)  # a follower only counts
    rig.outbox.tidy({ds.uid: Tracked(ds)})
    assert rig.metrics.registry.get_sample_value("dsguard_guard_alerts_pending") == 2
    await rig.sync()
    assert rig.outbox._submitted
    rig.outbox.tidy({})  # deleted
    assert rig.metrics.registry.get_sample_value("dsguard_guard_alerts_pending") == 0
    assert rig.outbox._submitted == {} and rig.outbox._pending == {}


# --- the pure helpers ------------------------------------------------------------------------------


def ds_state(annotations: dict[str, str] | None = None) -> DaemonSetState:
    obj = ds_obj()
    obj["metadata"]["annotations"] = dict(annotations or {})
    return DaemonSetState.from_object(obj)


def test_pending_entry_keeps_20_failing_pods_and_a_short_summary() -> None:
    many = tuple(FailingPod(f"agent-{i}", f"node-{i}", "CrashLoopBackOff") for i in range(50))
    alert = Alert(AlertKind.PAUSED, "ns", "agent", "uid-1", "bad", "x" * 5000, failing=many)
    entry = actions.pending_entry(alert)
    assert len(entry["failing"]) == actions.MAX_PENDING_FAILING == 20
    assert len(entry["summary"]) <= actions.MAX_REASON
    assert Alert.from_json(entry).key == alert.key


def test_the_pending_list_stays_under_its_cap_dropping_the_oldest() -> None:
    big = tuple(FailingPod("p" * 250, "n" * 250, "CrashLoopBackOff") for _ in range(20))
    alerts = [
        Alert(AlertKind.PAUSED, "ns", "agent", "uid-1", f"rev{i}", "s" * 900, failing=big) for i in range(10)
    ]
    entries = [actions.pending_entry(a) for a in alerts]
    value, dropped = actions.encode_pending(entries)
    assert len(value.encode()) <= actions.MAX_PENDING_BYTES
    assert dropped > 0
    assert [e["revision"] for e in json.loads(value)] == [f"rev{i}" for i in range(dropped, 10)]
    assert actions.encode_pending(entries[:1])[1] == 0


def test_with_pending_alert_appends_to_the_version_it_patches() -> None:
    first, second = foreign_alert(), foreign_alert(kind=AlertKind.RESUMED)
    ds = ds_state({ALERTS_PENDING: json.dumps([first.to_json()])})
    patch, dropped = actions.with_pending_alert(actions.pause_patch(ds, "bad", "why", "now"), ds, second)
    assert dropped == 0
    assert json.loads(patch["metadata"]["annotations"][ALERTS_PENDING]) == [first.to_json(), second.to_json()]
    broken = ds_state({ALERTS_PENDING: "{"})  # replaced: it could never be cleared by entry
    patch, _ = actions.with_pending_alert(actions.stalled_patch(broken, "bad"), broken, second)
    assert json.loads(patch["metadata"]["annotations"][ALERTS_PENDING]) == [second.to_json()]


def test_clear_patch_tests_then_replaces_or_removes() -> None:
    keep = [foreign_alert().to_json()]
    ops = actions.clear_pending_patch("[1,2]", keep)
    path = "/metadata/annotations/dsguard.io~1alerts-pending"
    assert ops == [
        {"op": "test", "path": path, "value": "[1,2]"},
        {"op": "replace", "path": path, "value": actions.encode_pending(keep)[0]},
    ]
    assert actions.clear_pending_patch("[1]", [])[1] == {"op": "remove", "path": path}
    assert actions.pending_entries(None) == [] and actions.pending_entries('{"a":1}') is None


def test_entry_identity_tells_a_repeated_key_apart() -> None:
    a = foreign_alert()
    b = Alert(**{**a.__dict__, "at": datetime(2027, 1, 15, 9, 0, tzinfo=UTC)})
    assert a.key == b.key
    assert actions.entry_id(a.to_json()) != actions.entry_id(b.to_json())
    assert actions.entry_id({"key": 1}) is None


async def test_the_loop_resends_once_every_watch_has_listed_without_another_event() -> None:
    obj = ds_with_pending(foreign_alert().to_json())
    obj["status"].update(updatedNumberScheduled=5, numberAvailable=5)  # complete: no tick re-marks it
    h = Harness(obj)  # the real monotonic clock: the loop runs
    h.listed = False
    h.guard.tick = 0.01
    await h.process()  # the DaemonSet's own event, taken before the other watches listed
    assert h.alerts == []
    task = asyncio.create_task(h.guard.run())
    try:
        await asyncio.sleep(0.05)  # many ticks: nothing is resent while a watch has not listed
        assert h.alerts == []
        h.listed = True
        async with asyncio.timeout(2):
            await h.notified.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert h.alerts == [foreign_alert()]
