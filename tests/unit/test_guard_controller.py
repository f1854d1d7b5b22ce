"""guard.controller.Guard fed watch events by hand (through its Store), against the fake apiserver
of tests.support.guard_fakes that answers its patches as the apiserver would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import ORIGINAL_STRATEGY, PAUSED, PAUSED_REVISION
from guard.notify.alert import AlertKind
from tests.support.guard_fakes import STRATEGY, FakePatcher, Harness, ds_obj, pod_obj, revision_obj
from tests.support.polling import poll_async


async def test_pause_is_patched_once_and_alerted_once() -> None:
    h = Harness()
    h.rollout(failing=2)
    await h.process()
    assert len(h.api.patches) == 1
    assert h.api.get()["metadata"]["annotations"][PAUSED] == "true"
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED]
    # evaluated again before the watch brings the patched version: no second patch
    await h.process()
    assert len(h.api.patches) == 1
    h.watch()
    await h.process()
    assert len(h.api.patches) == 1 and len(h.alerts) == 1


async def test_a_conflict_is_not_alerted_and_retried_on_the_next_version_only() -> None:
    h = Harness()
    h.rollout(failing=2)
    h.api.bump("agent")  # the DaemonSet controller wrote status after the guard's last event
    await h.process()
    assert len(h.api.patches) == 1 and h.alerts == []  # 409: nothing was paused, nothing said
    await h.process()
    assert len(h.api.patches) == 1  # the same stale version: no retry storm
    h.watch()  # the newer version arrives
    await h.process()
    assert len(h.api.patches) == 2
    assert h.api.get()["metadata"]["annotations"][PAUSED] == "true"
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED]


async def test_a_refused_patch_is_not_alerted_and_is_retried() -> None:
    h = Harness()
    h.rollout(failing=2)
    h.api.fail_with = 500
    await h.process()
    assert h.alerts == [] and PAUSED not in h.api.get()["metadata"]["annotations"]
    assert h.metrics.registry.get_sample_value("dsguard_guard_action_errors_total", {"step": "pause"}) == 1
    await h.process()  # the next evaluation (the tick, or any event) tries again
    assert h.api.get()["metadata"]["annotations"][PAUSED] == "true"
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED]


async def test_an_unreachable_apiserver_does_not_stop_the_guard() -> None:
    h = Harness()
    h.rollout(failing=2)

    async def down(namespace: str, name: str, body: Mapping[str, Any], content_type: str) -> None:
        raise aiohttp.ClientConnectionError("connection refused")

    real, h.guard.patcher = h.guard.patcher, FakePatcher(down)
    await h.process()  # raised out of process() before: the evaluation loop died for good
    assert h.alerts == []
    h.guard.patcher = real
    await h.process()
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED]


async def test_a_broken_pause_record_is_reported_not_fatal() -> None:
    h = Harness()
    h.rollout(failing=2)
    await h.process()
    h.watch()
    obj = h.api.objs["agent"]
    obj["metadata"]["annotations"][ORIGINAL_STRATEGY] = "not json"  # someone's hand edit
    h.store.revision_event("ADDED", revision_obj("fixed", 3))  # then a new template: RESUME
    h.api.bump("agent", spec=True)
    h.watch()
    await h.process()
    await h.process()  # once per version: not a log line per tick
    assert h.metrics.registry.get_sample_value("dsguard_guard_action_errors_total", {"step": "resume"}) == 1
    assert h.api.get()["metadata"]["annotations"][PAUSED] == "true"


async def test_resume_by_a_new_revision_alerts_once_about_the_paused_revision_every_time() -> None:
    h = Harness()
    for round_, bad in enumerate(("bad1", "bad2")):
        h.rollout(failing=2, bad=bad)
        # (the bad revision is the newest: number 2 + round)
        h.store.revision_event("ADDED", revision_obj(bad, 2 + 2 * round_))
        await h.process()
        h.watch()
        assert h.api.get()["metadata"]["annotations"][PAUSED_REVISION] == bad
        # the good template again: its revision becomes the newest; the guard resumes
        h.store.revision_event("ADDED", revision_obj("good", 3 + 2 * round_))
        h.api.bump("agent", spec=True)
        h.watch()
        await h.process()
        h.watch()  # the resumed version comes back: no second RESUMED alert from _on_resumed
        await h.process()
        assert PAUSED not in h.api.get()["metadata"]["annotations"]
        assert h.api.get()["spec"]["updateStrategy"] == STRATEGY
    # both rounds, even the second resume to the same revision "good" soon after the first
    assert [(a.kind, a.revision) for a in h.alerts] == [
        (AlertKind.PAUSED, "bad1"),
        (AlertKind.RESUMED, "bad1"),
        (AlertKind.PAUSED, "bad2"),
        (AlertKind.RESUMED, "bad2"),
    ]


async def test_a_resume_by_someone_else_is_alerted() -> None:
    h = Harness()
    h.rollout(failing=2)
    await h.process()
    h.watch()
    obj = h.api.get()
    obj["metadata"]["annotations"] = {}
    obj["metadata"]["resourceVersion"] = "99"
    h.store.daemonset_event("MODIFIED", obj)  # `dsguard resume` by a person
    assert [(a.kind, a.revision) for a in h.alerts] == [
        (AlertKind.PAUSED, "bad"),
        (AlertKind.RESUMED, "bad"),
    ]


async def test_failing_pods_gauge_sums_every_daemonset_and_counts_paused_ones() -> None:
    h = Harness(ds_obj("uid-1", "a"), ds_obj("uid-2", "b"))
    h.leading = False  # observe only
    h.rollout(failing=1, uid="uid-1", name="a")
    h.rollout(failing=3, uid="uid-2", name="b")
    await h.process()
    assert h.gauge("dsguard_guard_failing_pods") == 4
    await h.guard.process({"uid-1"})  # only one of them changed: the other still counts
    assert h.gauge("dsguard_guard_failing_pods") == 4
    h.leading = True
    await h.process()
    h.watch("b")  # b is paused now
    await h.guard.process({"uid-2"})
    assert h.gauge("dsguard_guard_failing_pods") == 4
    h.store.daemonset_event("DELETED", h.api.get("b"))
    await h.guard.process({"uid-2"})
    assert h.gauge("dsguard_guard_failing_pods") == 1


async def test_run_stops_promptly_when_cancelled() -> None:
    guard = Harness().guard
    guard.tick = 0.01  # cancel lands on or near a tick's timeout
    for _ in range(20):
        task = asyncio.create_task(guard.run())
        await asyncio.sleep(0.01)
        task.cancel()
        async with asyncio.timeout(1):
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_events_for_a_daemonset_are_taken_together_not_evaluated_one_by_one() -> None:
    h = Harness()
    h.rollout(failing=0)
    times = iter(range(10**6))
    h.guard.timer = lambda: next(times) * 0.005  # each evaluation "takes" 5 ms: 45 ms apart
    evaluated: list[float] = []
    real = h.guard.evaluate

    def counting(uid: str) -> Any:
        evaluated.append(time.monotonic())
        return real(uid)

    h.guard.evaluate = counting  # type: ignore[method-assign]
    task = asyncio.create_task(h.guard.run())
    try:
        start = time.monotonic()
        while time.monotonic() - start < 0.3:  # an event every 2 ms
            h.store.pod_event("MODIFIED", pod_obj("agent-0", "bad", crashing=False))
            await asyncio.sleep(0.002)
        last_event = time.monotonic()
        await asyncio.sleep(0.15)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert 3 <= len(evaluated) <= 12, len(evaluated)  # ~150 events
    gaps = [b - a for a, b in itertools.pairwise(evaluated)]
    assert min(gaps) >= 0.04
    assert evaluated[-1] >= last_event - 0.05  # the last events were not dropped, only deferred


async def test_a_blind_guard_acts_on_nothing_and_does_what_became_due_once_its_watches_are_back() -> None:
    h = Harness()
    h.guard.tick = 0.01
    h.current = False  # the pod watch lost: what the store holds may be long gone
    h.rollout(failing=2)
    evaluations = 0
    real = h.guard.evaluate

    def counting(uid: str) -> Any:
        nonlocal evaluations
        evaluations += 1
        return real(uid)

    h.guard.evaluate = counting  # type: ignore[method-assign]

    async def evaluated(times: int) -> None:
        target = evaluations + times
        await poll_async(lambda: evaluations >= target, what=f"{times} more evaluations", timeout=5)

    task = asyncio.create_task(h.guard.run())
    try:
        await evaluated(5)  # several ticks with a pause due: nothing done
        assert h.gauge("dsguard_guard_failing_pods") == 2
        assert h.api.patches == [] and h.alerts == []
        h.current = True  # relisted: the failing pods are real
        await poll_async(lambda: len(h.api.patches) == 1, what="the pause", timeout=5)
        h.watch()  # the paused version arrives
        await evaluated(5)
        assert len(h.api.patches) == 1 and [a.kind for a in h.alerts] == [AlertKind.PAUSED]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("status", "headers", "most"),
    [
        (503, None, 2),  # after 1 s, then 2 s: two attempts in 1.5 s, not one a tick (30)
        (403, None, 2),  # no RBAC for the patch: not a log line every tick either
        (429, {"Retry-After": "0.2"}, 9),  # the apiserver's word: about every 0.2 s
    ],
)
async def test_a_failing_action_is_retried_with_a_backoff_not_every_tick(
    status: int, headers: dict[str, str] | None, most: int
) -> None:
    h = Harness()
    h.guard.tick = 0.05
    h.rollout(failing=2)
    attempts: list[float] = []

    async def refused(namespace: str, name: str, body: Mapping[str, Any], content_type: str) -> None:
        attempts.append(time.monotonic())
        error = ApiException(status=status, reason="refused")
        error.headers = headers  # type: ignore[assignment]
        raise error

    real, h.guard.patcher = h.guard.patcher, FakePatcher(refused)
    task = asyncio.create_task(h.guard.run())
    try:
        await asyncio.sleep(1.5)
        assert 2 <= len(attempts) <= most, attempts
        if status == 429:
            assert len(attempts) >= 4, attempts  # not the 1-2-4 s ladder
        # the apiserver takes it again: the pause goes through at the next attempt, and the
        # backoff starts afresh
        h.guard.patcher = real
        await poll_async(lambda: len(h.api.patches) == 1, what="the pause", timeout=5)
        assert "uid-1" not in h.guard._action_failures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [a.kind for a in h.alerts] == [AlertKind.PAUSED]
