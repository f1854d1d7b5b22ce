"""Alerts are at least once: the pending alerts (dsguard.io/alerts-pending) on the real control plane.

The guard writes an action's alert into the action's own patch and takes it off once every sink
has settled it. A guard SIGKILLed in between leaves it there, and the next guard sends it again.
The world (kwok nodes, the DaemonSet, the HTTPS alert receiver, the guard processes) is the one
of test_guard_e2e.py: tests/support/guard_scenario.py, and the `scenario` fixture of conftest.py.
"""

from __future__ import annotations

import json
from typing import Any

from guard.notify.sinks import DELIVERY_HEADER
from tests.support.guard_scenario import (
    BAD_IMAGE,
    CRASHLOOP,
    GOOD_IMAGE,
    SINK,
    DaemonSetWatch,
    Scenario,
    assert_signed_alert,
    setup_rollout,
)
from tests.support.polling import poll

PENDING = "dsguard.io/alerts-pending"
ALWAYS_503 = 10**6  # AlertReceiver.fail_first: answer 503 to everything


def pending(annotations: dict[str, str]) -> list[dict[str, Any]]:
    raw = annotations.get(PENDING)
    return [] if raw is None else list(json.loads(raw))


def first_version(watch: DaemonSetWatch, annotation: str) -> dict[str, Any] | None:
    """The first version the watch saw carrying `annotation`."""
    return next((v for v in watch.versions if annotation in (v["metadata"].get("annotations") or {})), None)


def test_guard_killed_before_its_alert_got_through_the_next_guard_sends_it(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver(fail_first=ALWAYS_503)
    guard = s.guard(s.policy(alert_url=receiver.url), lease_duration=3)
    setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    annotations = s.paused()
    bad = annotations["dsguard.io/paused-revision"]
    # the alert is on the DaemonSet in the very version that records the pause
    [entry] = pending(annotations)
    assert (entry["kind"], entry["revision"]) == ("paused", bad)
    key = entry["key"]
    poll(lambda: receiver.deliveries, what="the receiver to turn the alert away")
    poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
    guard.kill()
    assert receiver.accepted == []
    assert [e["key"] for e in pending(s.annotations())] == [key], "cleared though never delivered"

    receiver.fail_first = 0  # the receiver is back: 200 from now on
    guard.start()
    delivery = poll(
        lambda: receiver.accepted, what="the restarted guard to send the pending alert", timeout=30
    )[0]
    body = assert_signed_alert(s, delivery, kind="paused", revision=bad)
    assert body["key"] == key
    assert body["at"] == entry["at"]  # the same alert, not a new one
    # so the same X-Dsguard-Delivery as the attempts the first guard made: receivers dedupe on it
    assert delivery.header(DELIVERY_HEADER) == receiver.deliveries[0].header(DELIVERY_HEADER) != ""
    poll(lambda: PENDING not in s.annotations(), what="the delivered alert to be taken off the DaemonSet")

    assert guard.metric("dsguard_guard_alerts_resent_total") == 1
    assert guard.metric("dsguard_guard_actions_total") == 0  # no second pause
    assert len(receiver.accepted) == 1
    # at least once: each guard recorded the Event
    assert len(s.events("RolloutPaused")) == 2
    assert s.events("AlertDeliveryFailed") == []  # SIGKILL: nothing recorded, nothing lost either
    poll(lambda: guard.metric("dsguard_guard_alerts_pending") == 0, what="the pending-alerts gauge to drop")


def test_delivered_alerts_are_taken_off_and_sent_once_per_sink(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url))
    good = setup_rollout(s, [guard])
    watch = s.watch()

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.paused()["dsguard.io/paused-revision"]
    # (taken off within milliseconds of the delivery: the watch has the version that paused)
    pausing = poll(lambda: first_version(watch, "dsguard.io/paused"), what="the watch to see the pause")
    [paused] = pending(pausing["metadata"]["annotations"])
    assert paused["key"].endswith(f"/{bad}/paused")
    poll(lambda: receiver.accepted, what="the paused alert at the receiver")
    poll(lambda: PENDING not in s.annotations(), what="the paused alert to be taken off")

    # the fixed template: the guard resumes, and its resumed alert goes the same way
    s.apply(s.daemonset(image=GOOD_IMAGE))
    poll(lambda: "dsguard.io/paused" not in s.annotations(), what="the guard to resume")
    poll(lambda: len(receiver.accepted) == 2, what="the resumed alert at the receiver")
    poll(lambda: PENDING not in s.annotations(), what="the resumed alert to be taken off")
    assert s.newest_revision() == good

    # every version the guard wrote: each action carried its alert, each clear removed it
    seen = [pending(v["metadata"].get("annotations") or {}) for v in watch.versions]
    keys = [[e["key"] for e in entries] for entries in seen]
    resumed_key = paused["key"].rsplit("/", 1)[0] + "/resumed"
    assert [paused["key"]] in keys and [resumed_key] in keys, keys
    assert all(len(k) <= 1 for k in keys), keys

    # exactly once per key and sink: the webhook, and the Event sink
    assert [json.loads(d.body)["kind"] for d in receiver.deliveries] == ["paused", "resumed"]
    assert [json.loads(d.body)["key"] for d in receiver.deliveries] == [paused["key"], resumed_key]
    assert len(s.events("RolloutPaused")) == 1
    assert len(s.events("RolloutResumed")) == 1
    assert guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="delivered") == 2
    assert guard.metric("dsguard_guard_alerts_resent_total") == 0
    poll(lambda: guard.metric("dsguard_guard_alerts_pending") == 0, what="the pending-alerts gauge at 0")
