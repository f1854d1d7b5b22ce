"""The rollout guard end to end: `dsguard guard` against the real control plane and kwok.

The real DaemonSet controller rolls DaemonSets out over 20 kwok nodes per test (labelled
`dsguard.test/group=<namespace>`, the DaemonSet's nodeSelector), kwok plays the pods (a
crash-looping template carries the pod annotation `dsguard.test/behavior: crashloop`), and the
guard runs as a child process (localcluster.guard_host.HostGuard) with a static policy for the
test's namespace. Alerts go to an HTTPS receiver on 127.0.0.1 with a throwaway CA that the guard
trusts through SSL_CERT_FILE; the HMAC key is a Secret the test creates. That world (and the
timings of the bad template) is tests/support/guard_scenario.py; the `scenario` fixture is in
conftest.py.
"""

from __future__ import annotations

import json

from guard.notify.sinks import DELIVERY_HEADER
from localcluster.nodes import POD_BEHAVIOR_ANNOTATION, POD_TIMING_ANNOTATIONS, NodeBehavior
from tests.support.guard_scenario import (
    BAD_IMAGE,
    CRASHLOOP,
    GOOD_IMAGE,
    MAX_UNAVAILABLE,
    PAUSE_ANNOTATIONS,
    REVISION_LABEL,
    SINK,
    THRESHOLD,
    Scenario,
    assert_signed_alert,
    setup_rollout,
)
from tests.support.polling import poll


def ready_on(s: Scenario, revision: str, count: int, *, timeout: float) -> list[str]:
    """Once `count` pods of `revision` are Ready: the first `count` of their nodes, by name."""

    def ready() -> list[str] | None:
        nodes = [
            p["spec"]["nodeName"]
            for p in s.pods()
            if p["metadata"]["labels"].get(REVISION_LABEL) == revision
            and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []
            )
        ]
        return sorted(nodes)[:count] if len(nodes) >= count else None

    return poll(ready, what=f"{count} Ready pods of revision {revision}", timeout=timeout, interval=0.1)


# --- the tests ----------------------------------------------------------------------------------


def test_good_rollout_completes_without_action_or_alert(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url))
    good = setup_rollout(s, [guard])

    fast = {POD_TIMING_ANNOTATIONS["start_delay"]: "100ms"}  # healthy, and quick to roll out
    s.apply(s.daemonset(image="registry.example.com/agent:1.1", annotations=fast))
    new = s.rolled_out("registry.example.com/agent:1.1")
    assert new != good
    # the guard has seen the finished rollout (and had every event of it to act on)
    poll(
        lambda: guard.metric("dsguard_guard_rollouts_in_progress") == 0,
        what="the guard to see the rollout complete",
    )

    ds = s.ds()
    assert not [k for k in ds["metadata"].get("annotations") or {} if k.startswith("dsguard.io/")]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert s.guard_events() == []
    assert guard.metric("dsguard_guard_actions_total") == 0
    assert receiver.deliveries == []


def test_crashlooping_rollout_is_paused_early_with_an_event_and_one_signed_alert(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url))
    good = setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    annotations = s.paused()
    bad = s.newest_revision()
    assert bad != good

    on_bad = s.settled_on(bad)
    assert THRESHOLD <= len(on_bad) <= THRESHOLD + MAX_UNAVAILABLE, on_bad

    ds = s.ds()
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert set(PAUSE_ANNOTATIONS) <= set(annotations)
    assert annotations["dsguard.io/paused-revision"] == bad
    assert json.loads(annotations["dsguard.io/original-update-strategy"]) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": MAX_UNAVAILABLE, "maxSurge": 0},
    }
    reason = annotations["dsguard.io/pause-reason"]
    assert f"on revision {bad} failing (threshold {THRESHOLD})" in reason
    assert "CrashLoopBackOff" in reason or "restarted" in reason

    events = poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
    delivery = poll(lambda: receiver.accepted, what="the alert at the receiver")[0]
    body = assert_signed_alert(s, delivery, kind="paused", revision=bad)
    assert {f["node"] for f in body["failing"]} <= set(on_bad)
    assert events[0]["type"] == "Warning" and events[0]["action"] == "Pause"
    assert bad in events[0]["message"]

    # nothing more happens: the rollout stays stopped, once
    poll(
        lambda: guard.metric("dsguard_guard_failing_pods") >= THRESHOLD,
        what="the guard to count the failing pods",
    )
    assert len(s.settled_on(bad)) == len(on_bad)
    assert len(s.events("RolloutPaused")) == 1
    assert len(receiver.deliveries) == 1
    assert guard.metric("dsguard_guard_actions_total", step="pause") == 1


def test_rollback_action_restores_the_previous_template_on_every_node(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(action="Rollback", alert_url=receiver.url))
    good = setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.started_new_revision(good)
    annotations = s.annotated("dsguard.io/rolled-back-revision", "the guard to roll back")
    assert annotations["dsguard.io/rolled-back-revision"] == bad
    assert annotations["dsguard.io/rolled-back-to"].startswith(f"{good} (revision 1)")
    assert "dsguard.io/paused" not in annotations

    # every pod back on the previous revision (the same ControllerRevision, now the newest)
    assert s.rolled_out(GOOD_IMAGE, timeout=90) == good
    ds = s.ds()
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD_IMAGE
    assert POD_BEHAVIOR_ANNOTATION not in (ds["spec"]["template"]["metadata"].get("annotations") or {})
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"

    events = poll(lambda: s.events("RolloutRolledBack"), what="the RolloutRolledBack Event")
    assert len(events) == 1 and events[0]["action"] == "Rollback"
    delivery = poll(lambda: receiver.accepted, what="the alert at the receiver")[0]
    assert_signed_alert(s, delivery, kind="rolled_back", revision=bad)
    assert len(receiver.deliveries) == 1
    assert guard.metric("dsguard_guard_actions_total", step="rollback") == 1


def test_node_going_not_ready_after_getting_the_new_pod_counts_as_failing(scenario: Scenario) -> None:
    s = scenario
    guard = s.guard(s.policy())
    good = setup_rollout(s, [guard])

    # a healthy template (slow to start, so the rollout is still going when the nodes fail)
    slow = {POD_TIMING_ANNOTATIONS["start_delay"]: "2s"}
    s.apply(s.daemonset(image="registry.example.com/agent:1.1", annotations=slow))
    new = s.started_new_revision(good)

    victims = ready_on(s, new, THRESHOLD, timeout=45)
    assert not s.annotations().get("dsguard.io/paused")  # healthy so far: no pause
    s.kubectl(
        "annotate",
        "node",
        *victims,
        "--overwrite",
        f"dsguard.test/node-behavior={NodeBehavior.NOT_READY.value}",
    )

    annotations = s.paused()
    assert annotations["dsguard.io/paused-revision"] == new
    reason = annotations["dsguard.io/pause-reason"]
    assert f"failing (threshold {THRESHOLD}): {THRESHOLD} node NotReady; nodes: " in reason, reason
    for node in victims:
        assert node in reason
    events = poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
    for node in victims:
        assert f"on {node} (node {node} NotReady since the new pod started)" in events[0]["message"]


def test_nodes_going_not_ready_while_retiring_do_not_count_against_the_rollout(scenario: Scenario) -> None:
    """A cordoned node and one the cluster-autoscaler scales down go NotReady for that, not for the
    agent they just got: the pause counts only the other nodes."""
    s = scenario
    guard = s.guard(s.policy())
    good = setup_rollout(s, [guard])
    slow = {POD_TIMING_ANNOTATIONS["start_delay"]: "5s"}  # the rollout is still going at the end
    s.apply(s.daemonset(image="registry.example.com/agent:1.1", annotations=slow))
    new = s.started_new_revision(good)

    cordoned, scaled_down, *victims = ready_on(s, new, THRESHOLD + 2, timeout=60)
    s.kubectl("cordon", cordoned)
    s.kubectl("taint", "node", scaled_down, "ToBeDeletedByClusterAutoscaler=1765000000:NoSchedule")
    not_ready = f"dsguard.test/node-behavior={NodeBehavior.NOT_READY.value}"
    s.kubectl("annotate", "node", cordoned, scaled_down, "--overwrite", not_ready)

    def retiring_not_ready() -> bool:
        for name in (cordoned, scaled_down):
            node = json.loads(s.kubectl("get", "node", name, "-o", "json").stdout)
            ready = [c for c in node["status"].get("conditions") or [] if c["type"] == "Ready"]
            if not ready or ready[0]["status"] == "True":
                return False
        return True

    poll(retiring_not_ready, what="the retiring nodes NotReady", timeout=30)
    assert not s.annotations().get("dsguard.io/paused")  # 2 NotReady nodes, under the threshold anyway
    s.kubectl("annotate", "node", *victims, "--overwrite", not_ready)

    reason = s.paused()["dsguard.io/pause-reason"]
    head = f"failing (threshold {THRESHOLD}): {THRESHOLD} node NotReady; nodes: "
    assert head in reason, reason
    # whole names: node n1's name is a prefix of n12's
    assert sorted(reason.split(head, 1)[1].split(", ")) == sorted(victims), reason


def test_guard_killed_mid_rollout_and_restarted_pauses_exactly_once(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url), lease_duration=3)
    good = setup_rollout(s, [guard])
    watch = s.watch()

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.started_new_revision(good)
    guard.kill()
    assert not s.annotations().get("dsguard.io/paused"), "paused before the kill: the test raced"
    # the same replica restarted (a container restart keeps POD_NAME, hence the identity)
    guard.start()
    annotations = s.paused()
    assert annotations["dsguard.io/paused-revision"] == bad
    poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
    poll(lambda: receiver.accepted, what="the alert at the receiver")
    # Delivered alerts are taken off the DaemonSet's outbox; one killed before that is resent
    # (at least once), which is not what this test is about.
    poll(
        lambda: "dsguard.io/alerts-pending" not in s.annotations(), what="the delivered alert off the outbox"
    )

    # killed and restarted again, now after the pause: it must not pause or alert a second time
    guard.kill()
    guard.start()
    poll(lambda: guard.metric("dsguard_guard_leader") == 1, what="the leader to be back", timeout=30)
    poll(
        lambda: guard.metric("dsguard_guard_failing_pods") >= THRESHOLD,
        what="the restarted guard to evaluate",
    )

    assert len(watch.pauses()) == 1, watch.pauses()
    assert watch.pauses()[0] == s.annotations()["dsguard.io/paused-at"]
    assert len(s.events("RolloutPaused")) == 1
    assert len(receiver.deliveries) == 1
    assert_signed_alert(s, receiver.deliveries[0], kind="paused", revision=bad)
    assert guard.metric("dsguard_guard_actions_total") == 0  # the last incarnation did nothing


def test_leader_failover_pauses_exactly_once(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    policy = s.policy(alert_url=receiver.url)
    guards = [s.guard(policy, lease_duration=3), s.guard(policy, lease_duration=3)]
    good = setup_rollout(s, guards)
    by_id = {g.identity: g for g in guards}
    leader = by_id[
        poll(lambda: ((h := s.lease_holder()) in by_id and h) or None, what="a leader", timeout=30)
    ]
    follower = next(g for g in guards if g is not leader)
    poll(lambda: leader.metric("dsguard_guard_leader") == 1, what="the leader to know it")
    assert follower.metric("dsguard_guard_leader") == 0
    watch = s.watch()

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.started_new_revision(good)
    leader.kill()
    assert not s.annotations().get("dsguard.io/paused"), "paused before the kill: the test raced"

    annotations = s.paused()
    assert annotations["dsguard.io/paused-revision"] == bad
    assert s.lease_holder() == follower.identity
    events = poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
    assert events[0]["reportingInstance"] == follower.identity
    delivery = poll(lambda: receiver.accepted, what="the alert at the receiver")[0]
    assert_signed_alert(s, delivery, kind="paused", revision=bad)
    poll(
        lambda: follower.metric("dsguard_guard_failing_pods") >= 3,
        what="the new leader to count the failing pods",
    )

    assert len(watch.pauses()) == 1, watch.pauses()
    assert len(s.events("RolloutPaused")) == 1
    assert len(receiver.deliveries) == 1
    assert follower.metric("dsguard_guard_actions_total", step="pause") == 1


def test_alert_sink_down_then_back_gets_the_alert_once(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver(fail_first=1, start=False)  # nothing listens on its port yet
    guard = s.guard(s.policy(alert_url=receiver.url))
    setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    annotations = s.paused()
    bad = annotations["dsguard.io/paused-revision"]
    # the Event sink is not held up by the webhook sink being down
    poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
    poll(
        lambda: guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="retry") >= 1,
        what="a failed delivery to be retried",
    )
    assert guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="delivered") == 0

    receiver.start()  # back, on the same port; it turns the first request away with a 503
    poll(lambda: receiver.accepted, what="the alert to be delivered", timeout=60)
    poll(
        lambda: guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="delivered") == 1,
        what="the guard to count the delivery",
    )
    first, second = receiver.deliveries  # exactly: the 503 and the retry that got through
    assert (first.status, second.status) == (503, 200)
    assert first.header(DELIVERY_HEADER) and first.header(DELIVERY_HEADER) == second.header(DELIVERY_HEADER)
    assert first.body == second.body
    assert_signed_alert(s, second, kind="paused", revision=bad)
    assert guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="failed") == 0
    assert len(s.events("RolloutPaused")) == 1
    assert s.events("AlertDeliveryFailed") == []
