"""guard.controller.Guard fed watch events by hand, with a fake patcher that plays the apiserver.

The fake applies merge patches the way the apiserver does for the fields the guard writes
(annotations, updateStrategy), enforces the resourceVersion precondition (409 on a stale one),
applies JSON patches (422 when a `test` op fails, as the apiserver answers) and bumps
resourceVersion/generation, so each test can hand the patched object back to the guard as the
watch would.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import ORIGINAL_STRATEGY, PAUSED, PAUSED_REVISION
from dsguard.policy import GuardPolicy, Match, Policy
from guard import actions
from guard.controller import Guard
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert, AlertKind

T0 = 1_800_000_000.0
POLICY = Policy(name="agents", match=Match(), guard=GuardPolicy(failure_threshold=2))
STRATEGY = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 0}}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ds_obj(uid: str = "uid-1", name: str = "agent") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name, "namespace": "ns", "uid": uid, "resourceVersion": "10", "generation": 2,
            "annotations": {},
        },
        "spec": {"updateStrategy": copy.deepcopy(STRATEGY), "template": {"spec": {"containers": []}}},
        "status": {
            "observedGeneration": 2, "desiredNumberScheduled": 5, "updatedNumberScheduled": 2,
            "numberAvailable": 3, "numberReady": 3,
        },
    }  # fmt: skip


def revision_obj(hash_: str, number: int, uid: str = "uid-1", name: str = "agent") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-{hash_}",
            "namespace": "ns",
            "labels": {"controller-revision-hash": hash_},
            "ownerReferences": [{"kind": "DaemonSet", "uid": uid, "controller": True}],
        },
        "revision": number,
        "data": {"spec": {"template": {"spec": {"containers": []}, "$patch": "replace"}}},
    }


def pod_obj(name: str, hash_: str, *, crashing: bool, uid: str = "uid-1") -> dict[str, Any]:
    state = {"waiting": {"reason": "CrashLoopBackOff"}} if crashing else {"running": {}}
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"controller-revision-hash": hash_},
            "creationTimestamp": iso(T0 - 60),
            "ownerReferences": [{"kind": "DaemonSet", "uid": uid, "controller": True}],
        },
        "spec": {"nodeName": f"node-{name}"},
        "status": {
            "phase": "Running",
            "startTime": iso(T0 - 59),
            "conditions": [{"type": "Ready", "status": "False" if crashing else "True"}],
            "containerStatuses": [{"name": "c", "restartCount": 1, "state": state}],
        },
    }


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    """RFC 6902 on objects (test, add, replace, remove): the patched copy; 422 as the apiserver
    answers when an op fails."""
    out = copy.deepcopy(target)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (op["op"] != "add" and last not in node):
            raise ApiException(status=422, reason=f"{op['op']}: no {op['path']}")
        if op["op"] == "test" and node[last] != op["value"]:
            raise ApiException(status=422, reason=f"test failed on {op['path']}")
        if op["op"] in ("add", "replace"):
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[last]
    return out


class FakeApiserver:
    """DaemonSets by name; patch() as the apiserver would answer the guard's patches."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {o["metadata"]["name"]: copy.deepcopy(o) for o in objs}
        self.patches: list[Any] = []
        self.content_types: list[str] = []
        self.fail_with: int | None = None  # answer the next patch with this status

    async def patch(self, namespace: str, name: str, body: Any, content_type: str) -> None:
        self.patches.append(copy.deepcopy(body if content_type == actions.JSON_PATCH else dict(body)))
        self.content_types.append(content_type)
        if self.fail_with is not None:
            status, self.fail_with = self.fail_with, None
            raise ApiException(status=status, reason="fake")
        obj = self.objs[name]
        if content_type == actions.JSON_PATCH:
            self.objs[name] = json_patch(obj, body)
            self.bump(name)
            return
        want = body.get("metadata", {}).get("resourceVersion")
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        patch = copy.deepcopy(dict(body))
        patch.get("metadata", {}).pop("resourceVersion", None)
        merge(obj, patch)
        self.bump(name, spec="spec" in patch)

    def bump(self, name: str, *, spec: bool = False) -> dict[str, Any]:
        """A new version (a status write by the DaemonSet controller when spec is False)."""
        meta = self.objs[name]["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        if spec:
            meta["generation"] += 1
            self.objs[name]["status"]["observedGeneration"] = meta["generation"]
        return copy.deepcopy(self.objs[name])

    def get(self, name: str = "agent") -> dict[str, Any]:
        return copy.deepcopy(self.objs[name])


class FakePatcher:
    def __init__(self, patch: Any) -> None:
        self.patch = patch


class Harness:
    def __init__(self, *objs: dict[str, Any], policies: list[Policy] | None = None) -> None:
        self.api = FakeApiserver(*(objs or (ds_obj(),)))
        self.alerts: list[Alert] = []
        self.sent_with: list[GuardPolicy] = []  # the policy each alert went out under
        self.metrics = GuardMetrics()
        self.policies = [POLICY] if policies is None else policies
        self.now = T0
        self.mono: float | None = None  # a fake monotonic clock once set; the real one before

        def notify(alert: Alert, guard: GuardPolicy) -> None:
            self.alerts.append(alert)
            self.sent_with.append(guard)

        self.guard = Guard(
            policies_for=lambda ds: self.policies,
            patcher=self.api,
            notify=notify,
            metrics=self.metrics,
            clock=lambda: self.now,
            monotonic=lambda: time.monotonic() if self.mono is None else self.mono,
        )
        for o in self.api.objs.values():
            self.guard.daemonset_event("ADDED", copy.deepcopy(o))

    def advance(self, seconds: float) -> None:
        """Move the fake monotonic clock on (starting it at 1000 s)."""
        self.mono = (1000.0 if self.mono is None else self.mono) + seconds

    def rollout(self, failing: int, *, uid: str = "uid-1", name: str = "agent", bad: str = "bad") -> None:
        """Revisions good (1) and bad (2); `failing` crash-looping pods of 3 on bad."""
        self.guard.revision_event("ADDED", revision_obj("good", 1, uid, name))
        self.guard.revision_event("ADDED", revision_obj(bad, 2, uid, name))
        for i in range(3):
            self.guard.pod_event("ADDED", pod_obj(f"{name}-{i}", bad, crashing=i < failing, uid=uid))

    def watch(self, name: str = "agent") -> None:
        """The watch delivers the current version."""
        self.guard.daemonset_event("MODIFIED", self.api.get(name))

    async def process(self) -> None:
        await self.guard.process(set(self.guard.store.daemonsets))

    def gauge(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        assert value is not None
        return value


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
    h.guard.revision_event("ADDED", revision_obj("fixed", 3))  # then a new template: RESUME
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
        h.guard.revision_event("ADDED", revision_obj(bad, 2 + 2 * round_))
        await h.process()
        h.watch()
        assert h.api.get()["metadata"]["annotations"][PAUSED_REVISION] == bad
        # the good template again: its revision becomes the newest; the guard resumes
        h.guard.revision_event("ADDED", revision_obj("good", 3 + 2 * round_))
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
    h.guard.daemonset_event("MODIFIED", obj)  # `dsguard resume` by a person
    assert [(a.kind, a.revision) for a in h.alerts] == [
        (AlertKind.PAUSED, "bad"),
        (AlertKind.RESUMED, "bad"),
    ]


async def test_failing_pods_gauge_sums_every_daemonset_and_counts_paused_ones() -> None:
    h = Harness(ds_obj("uid-1", "a"), ds_obj("uid-2", "b"))
    h.guard.is_leader = lambda: False  # observe only
    h.rollout(failing=1, uid="uid-1", name="a")
    h.rollout(failing=3, uid="uid-2", name="b")
    await h.process()
    assert h.gauge("dsguard_guard_failing_pods") == 4
    await h.guard.process({"uid-1"})  # only one of them changed: the other still counts
    assert h.gauge("dsguard_guard_failing_pods") == 4
    h.guard.is_leader = lambda: True
    await h.process()
    h.watch("b")  # b is paused now
    await h.guard.process({"uid-2"})
    assert h.gauge("dsguard_guard_failing_pods") == 4
    h.guard.daemonset_event("DELETED", h.api.get("b"))
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
            h.guard.pod_event("MODIFIED", pod_obj("agent-0", "bad", crashing=False))
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


class FakeResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.reason = "Conflict" if status == 409 else "OK"
        self.body = body
        self.released = False

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        self.released = True


async def _respond(resp: FakeResponse) -> FakeResponse:
    return resp
