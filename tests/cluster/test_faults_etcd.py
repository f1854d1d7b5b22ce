"""etcd restarts and watch expiry, on a control plane of the test's own (tests/support/fault_world.py:
the webhook and a guard on the host, both watching DaemonSetPolicies; a crash-looping rollout begun
just before the fault; a policy change made just after it).

What the apiserver does, read in its source (k8s.io/apiserver/pkg/storage) and seen here:
* An etcd restart alone is invisible to watchers: the apiserver's etcd client resumes its watches
  from the last revision it got, so no client watch ends. (Measured: no restart, no relist.)
* If etcd compacted its history past that revision meanwhile (the apiserver's compactor does it
  every 5 minutes), the resumed etcd watch fails with "required revision has been compacted".
  With the watch cache (the default), the cache of each resource lists etcd again
  (storage "(re)initializing"): it ends every client watch, a watch started meanwhile gets 429, one
  from a resourceVersion older than the new list gets 410. Without the watch cache (resources the
  apiserver doesn't cache, or --watch-cache=false), the client watch itself carries the
  compaction as a watch ERROR event, code 410 Gone (etcd3/watcher.go: interpretWatchError).

So `compact_etcd()` + an etcd restart is the fault that expires every watch. Each test then
checks: every watch of the guard listed again (dsguard_guard_watch_lists_total), the webhook's
watches restarted (dsguard_watch_restarts_total), nothing was lost (the policy change reaches the
webhook; the guard pauses the rollout that failed around the fault) and nothing was done twice
(one pause, one RolloutPaused Event, one alert).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.fault_world import GUARD_WATCHES, WEBHOOK_WATCHES, FaultWorld
from tests.support.guard_scenario import BAD_IMAGE, CRASHLOOP, THRESHOLD, assert_signed_alert
from tests.support.polling import poll
from tests.support.tls import TLSFiles


def crash_etcd_around_a_bad_rollout(w: FaultWorld, *, compact: bool) -> dict[str, float]:
    """Start the crash-looping rollout, (compact etcd and) SIGKILL etcd at its first new pod, wait
    until the apiserver saw etcd gone, start it again, change the policy. Timings in seconds."""
    s, c = w.s, w.cluster
    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    s.started_new_revision(w.good)
    if compact:
        # Changes to other objects first, so the revision moves past every watcher's own.
        for i in range(3):
            c.kubectl("create", "configmap", f"bump-{i}", "-n", w.ns)
        c.compact_etcd()
    c.stop_component("etcd", grace=0)
    t_down = time.monotonic()
    poll(w.etcd_down_seen, what="the apiserver to see etcd gone", timeout=30, interval=0.1)
    t_start = time.monotonic()
    c.start_component("etcd")
    t_up = time.monotonic()
    w.require_fault_toleration()  # the apiserver is back: a write works again
    return {"down": t_up - t_down, "etcd_start": t_up - t_start, "t_up": t_up}


def assert_paused_once(w: FaultWorld) -> None:
    s = w.s
    annotations = s.paused(timeout=90)
    bad = annotations["dsguard.io/paused-revision"]
    assert bad != w.good
    delivery = poll(lambda: w.receiver.accepted, what="the alert at the receiver", timeout=60)[0]
    assert_signed_alert(s, delivery, kind="paused", revision=bad)
    # Settled: the alert is off the outbox annotation and the guard counts the failing pods, so any
    # second pause or alert would have been decided by now.
    poll(lambda: "dsguard.io/alerts-pending" not in s.annotations(), what="the alert settled", timeout=60)
    poll(lambda: w.guard.metric("dsguard_guard_failing_pods") >= THRESHOLD, what="the guard's failing pods")
    assert w.guard.metric("dsguard_guard_actions_total", step="pause") == 1
    assert w.guard.metric("dsguard_guard_actions_total") == 1
    assert len(s.events("RolloutPaused")) == 1
    assert len(w.receiver.deliveries) == 1
    assert s.annotations()["dsguard.io/paused-at"] == annotations["dsguard.io/paused-at"]


def test_etcd_restart_alone_ends_no_watch_after_a_compaction_every_watch_relists_nothing_lost_or_twice(
    tmp_path: Path, alert_tls: TLSFiles
) -> None:
    with FaultWorld(tmp_path, alert_tls) as w:
        lists = w.guard_lists()
        assert all(lists[r] == 1 for r in GUARD_WATCHES), lists
        hook_before = {
            r: w.webhook_restarts("error")[r] + w.webhook_restarts("gone")[r] for r in WEBHOOK_WATCHES
        }

        # A restart alone: the apiserver resumes its etcd watches, no watch of ours ends, and a
        # change made after it still arrives.
        w.cluster.stop_component("etcd", grace=0)
        poll(w.etcd_down_seen, what="the apiserver to see etcd gone", timeout=30, interval=0.1)
        w.cluster.start_component("etcd")
        w.require_fault_toleration()
        poll(w.webhook_adds_the_toleration, what="the webhook to apply the policy changed after the restart")
        assert w.guard_lists() == lists, "an etcd restart alone ended a watch"
        assert w.guard_restarts("error") == w.guard_restarts("gone") == dict.fromkeys(GUARD_WATCHES, 0.0)
        w.apply_policy()  # the toleration no longer required: the change after the next fault shows again
        poll(lambda: not w.webhook_adds_the_toleration(), what="the webhook to apply the policy change back")
        assert w.guard.metric("dsguard_guard_actions_total") == 0

        # After a compaction (what the apiserver's compactor does every 5 minutes), the same
        # restart expires every watch.
        t = crash_etcd_around_a_bad_rollout(w, compact=True)

        relisted = w.timed(lambda: w.relisted_since(lists), "every watch of the guard to list again")
        poll(
            lambda: all(
                w.webhook_restarts("error")[r] + w.webhook_restarts("gone")[r] > hook_before[r]
                for r in WEBHOOK_WATCHES
            ),
            what="every watch of the webhook to restart",
        )
        seen = w.timed(
            w.webhook_adds_the_toleration, "the webhook to apply the policy changed after the restart"
        )
        assert_paused_once(w)
        print(
            f"etcd restart: down {t['down']:.2f}s (start {t['etcd_start']:.2f}s); guard relisted every watch "
            f"{relisted:.2f}s after etcd was back; policy change seen by the webhook in {seen:.2f}s"
        )


def test_watch_expiry_every_watch_gets_410_gone_and_relists_nothing_lost_nothing_twice(
    tmp_path: Path, alert_tls: TLSFiles
) -> None:
    # Without the watch cache each client watch is an etcd watch: the compaction reaches it as 410.
    with FaultWorld(tmp_path, alert_tls, apiserver_args=("--watch-cache=false",)) as w:
        lists = w.guard_lists()
        assert all(w.guard_restarts("gone")[r] == 0 for r in GUARD_WATCHES)

        crash_etcd_around_a_bad_rollout(w, compact=True)

        relisted = w.timed(lambda: w.relisted_since(lists), "every watch of the guard to list again")
        gone = w.guard_restarts("gone")
        assert all(gone[r] >= 1 for r in GUARD_WATCHES), f"410 Gone seen by the guard's watches: {gone}"
        assert "expired, listing again" in w.guard.log_text()
        poll(lambda: all(v >= 1 for v in w.webhook_restarts("gone").values()),
             what="410 Gone at every watch of the webhook")  # fmt: skip
        w.timed(w.webhook_adds_the_toleration, "the webhook to apply the policy changed after the 410s")
        assert_paused_once(w)
        print(
            f"watch expiry: guard relisted every watch {relisted:.2f}s after etcd was back (410 Gone: {gone})"
        )
