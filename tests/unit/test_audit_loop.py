"""guard.audit_loop.Auditor over a ClusterCache filled by hand (as its reflectors would), with a fake
StatusWriter that records the DaemonSetPolicy status writes and a fake core/v1 Events API behind the
real EventRecorder.

The cache is made `synced` with its public use_static_facts() (no reflectors, a server version),
then filled through replace_nodes/replace_namespaces/replace_policies and the watch-event methods,
exactly as the watches feed it. Most tests drive audit_once() for determinism; the ones about the
loop itself (leadership, wake-ups) run run() as a task and poll for a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import generate_latest

from dsguard.cluster_cache import ClusterCache
from dsguard.policy import parse_policy
from guard.audit_loop import MAX_EVENTS_PER_AUDIT, RESOLVED_REASON, VIOLATION_REASON, Auditor
from guard.metrics import GuardMetrics
from guard.notify.events import EventRecorder
from guard.policy_audit import COMPLIANT, MAX_LISTED, READY
from tests.support.builders import daemonset, node, policy
from tests.support.polling import poll_async

AGENT = "registry.example.com/agent"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
T0 = datetime(2030, 1, 1, tzinfo=UTC)
RESYNC = 300.0

# -- the cluster -----------------------------------------------------------------------------------

LOG_COLLECTOR: dict[str, Any] = {
    "match": {"namespaces": ["logging"]},
    "enforcement": "Enforce",
    "tolerations": {"required": [INFRA], "onMissing": "Add", "coverage": {"nodeSelector": {}}},
    "versions": {
        "rules": [{"image": AGENT, "compatibility": [{"kubernetes": ">=1.33.0", "versions": ">=2.0.0"}]}],
        "unknownVersion": "Warn",
    },
}
EXPORTERS: dict[str, Any] = {
    "match": {"namespaces": ["monitoring"]},
    "enforcement": "Audit",
    "rollout": {"maxUnavailable": 1},
}
GPU: dict[str, Any] = {
    "match": {"namespaceSelector": {"matchLabels": {"team": "gpu"}}},
    "enforcement": "Warn",
    "tolerations": {"required": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}
BROKEN: dict[str, Any] = {"enforcement": "Sometimes"}


#: Ready nodes labelled kubernetes.io/hostname=<name>, untainted and on kubelet v1.33.2 unless said otherwise.
node_obj = partial(node, hostname_label=True, kubelet="v1.33.2", taints=(), ready=True)


def ns_obj(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


#: ds_obj's status: 2 pods desired, 2 ready.
STATUS = {"desiredNumberScheduled": 2, "numberReady": 2, "observedGeneration": 1}
#: DaemonSets as the watch hands them over: in `logging` unless said otherwise, uid-<namespace>-<name>,
#: tolerating INFRA, maxUnavailable 1, two of two pods ready.
ds_obj = partial(
    daemonset, namespace="logging", image=f"{AGENT}:2.1.0", tolerations=(INFRA,), max_unavailable=1,
    uid="uid-{namespace}-{name}", resource_version="100", generation=1, app_label=True, status=STATUS,
)  # fmt: skip


policy_obj = partial(policy, generation=1, resource_version="7")


def nodes() -> list[dict[str, Any]]:
    return [node_obj("node-a", kubelet="v1.33.2"), node_obj("node-b", kubelet="v1.32.5")]


def namespaces() -> list[dict[str, Any]]:
    return [ns_obj("logging"), ns_obj("monitoring"), ns_obj("gpu-operator", team="gpu")]


def policies() -> list[dict[str, Any]]:
    return [
        policy_obj("log-collector", LOG_COLLECTOR, generation=3),
        policy_obj("exporters", EXPORTERS, generation=1),
        policy_obj("gpu", GPU, generation=2),
        policy_obj("broken", BROKEN, generation=5),
    ]


def daemonsets() -> list[dict[str, Any]]:
    return [
        ds_obj("fluent-bit"),  # complies
        ds_obj("old-agent", image=f"{AGENT}:1.9.0", tolerations=()),  # versions + tolerations
        ds_obj("node-exporter", namespace="monitoring", max_unavailable=3),  # rollout cap (Audit policy)
        ds_obj("ungoverned", namespace="default", image=f"{AGENT}:0.1.0", tolerations=()),
    ]


# -- fakes ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class RecordingWriter:
    """Records every status write; raises ApiException(status) for the first len(fail) calls."""

    def __init__(self, fail: Iterable[int] = ()) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.fail = list(fail)
        self.attempts = 0

    async def write(self, policy: str, status: Mapping[str, Any]) -> None:
        self.attempts += 1
        if self.fail:
            code = self.fail.pop(0)
            raise ApiException(status=code, reason={403: "Forbidden", 404: "Not Found"}.get(code, "Error"))
        self.writes.append((policy, copy.deepcopy(dict(status))))

    def names(self) -> list[str]:
        return [name for name, _ in self.writes]

    def last(self, policy: str) -> dict[str, Any]:
        return [s for name, s in self.writes if name == policy][-1]


class FakeEvents:
    """CoreV1Api.create_namespaced_event, recording the bodies; fails with `fail` if set."""

    def __init__(self, fail: int | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = fail

    async def create_namespaced_event(self, namespace: str, body: Any) -> object:
        if self.fail is not None:
            raise ApiException(status=self.fail, reason="Forbidden")
        assert namespace == body["involvedObject"]["namespace"]
        self.bodies.append(body)
        return body

    def of(self, reason: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["reason"] == reason]

    def refs(self, reason: str) -> list[tuple[str, str]]:
        return [(b["involvedObject"]["namespace"], b["involvedObject"]["name"]) for b in self.of(reason)]


@dataclass
class Rig:
    cache: ClusterCache
    writer: RecordingWriter
    events: FakeEvents
    metrics: GuardMetrics
    clock: Clock
    auditor: Auditor

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def exposition(self) -> str:
        return generate_latest(self.metrics.registry).decode()


def make_cache(
    *,
    node_objs: list[dict[str, Any]] | None = None,
    policy_objs: list[dict[str, Any]] | None = None,
    static: bool = False,
    server_version: str | None = "v1.33.2",
) -> ClusterCache:
    cache = ClusterCache(static_policies=[parse_policy(p) for p in (policy_objs or [])] if static else None)
    if server_version is not None:
        cache.use_static_facts([], server_version)  # no reflectors: synced once the version is known
    cache.replace_nodes(nodes() if node_objs is None else node_objs)
    cache.replace_namespaces(namespaces())
    if not static:
        cache.replace_policies(policies() if policy_objs is None else policy_objs)
    return cache


def make_rig(
    *,
    cache: ClusterCache | None = None,
    ds_objs: list[dict[str, Any]] | None = None,
    writer: RecordingWriter | None = None,
    events: FakeEvents | None = None,
    is_leader: Callable[[], bool] = lambda: True,
    tick: float = 1.0,
    min_interval: float = 1.0,
) -> Rig:
    clock = Clock()
    metrics = GuardMetrics()
    events = events or FakeEvents()
    writer = writer or RecordingWriter()
    cache = cache or make_cache()
    auditor = Auditor(
        cache, writer, EventRecorder(events, instance="test-guard", now=clock), metrics,
        is_leader=is_leader, resync=RESYNC, min_interval=min_interval, tick=tick, now=clock,
    )  # fmt: skip
    auditor.replace_daemonsets(daemonsets() if ds_objs is None else ds_objs)
    return Rig(cache, writer, events, metrics, clock, auditor)


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == type_]
    return dict(found)


def listed(status: Mapping[str, Any]) -> dict[str, list[str]]:
    return {f"{e['namespace']}/{e['name']}": e["rules"] for e in status["violations"]}


async def stop(task: asyncio.Task[None], timeout: float = 2.0, *, insist: bool = False) -> bool:  # noqa: ASYNC109
    """Cancel the loop once, as lifecycle.cancel_and_wait does (or, `insist`ing, every 20 ms);
    whether it stopped within `timeout`. Re-raises what else ended it."""
    deadline = time.monotonic() + timeout
    task.cancel()
    while not task.done() and time.monotonic() < deadline:
        await asyncio.wait({task}, timeout=0.02 if insist else deadline - time.monotonic())
        if insist and not task.done():
            task.cancel()
    if task.done():
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
    return task.done()


@contextlib.asynccontextmanager
async def running(
    auditor: Auditor, unstick: Callable[[], None] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """run() as a task, cancelled at the end. `unstick`: what lets a loop that ignored its
    cancellation audit (and so clear its wake flag), so a failing test doesn't leak a busy task."""
    task = asyncio.create_task(auditor.run())
    try:
        yield task
    finally:
        stopped = await stop(task)
        if not stopped and unstick is not None:
            unstick()
            stopped = await stop(task, insist=True)
    assert stopped, "the audit loop ignored its cancellation"


class LeaderFlag:
    """is_leader that counts its calls: one per pass of the loop."""

    def __init__(self, leading: bool) -> None:
        self.leading = leading
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.leading


# -- status writes -------------------------------------------------------------------------------


async def test_first_audit_writes_every_cluster_policy_status() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    assert sorted(rig.writer.names()) == ["broken", "exporters", "gpu", "log-collector"]

    logs = rig.writer.last("log-collector")
    assert logs["observedGeneration"] == 3
    assert (logs["matchedDaemonSets"], logs["violationCount"], logs["unlistedViolations"]) == (3 - 1, 1, 0)
    assert listed(logs) == {"logging/old-agent": ["tolerations", "versions"]}
    (entry,) = logs["violations"]
    assert "node-a" in entry["message"] and "node-b" not in entry["message"]  # 1.9.0 is fine on kubelet 1.32
    assert condition(logs, READY)["status"] == "True"
    assert (condition(logs, COMPLIANT)["status"], condition(logs, COMPLIANT)["reason"]) == (
        "False",
        "ViolationsFound",
    )
    assert logs["auditedAt"] == "2030-01-01T00:00:00Z"

    exporters = rig.writer.last("exporters")  # Audit enforcement is audited too
    assert listed(exporters) == {"monitoring/node-exporter": ["rollout"]}

    gpu = rig.writer.last("gpu")  # governs nothing
    assert (gpu["matchedDaemonSets"], gpu["violationCount"], gpu["observedGeneration"]) == (0, 0, 2)
    assert condition(gpu, COMPLIANT)["reason"] == "NoViolations"

    broken = rig.writer.last("broken")  # never valid: not enforced, not audited
    ready = condition(broken, READY)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.enforcement" in ready["message"] and "not enforced until fixed" in ready["message"]
    assert condition(broken, COMPLIANT)["status"] == "Unknown"
    assert broken["observedGeneration"] == 5

    assert rig.sample("dsguard_audit_runs_total") == 1
    assert rig.sample("dsguard_audit_status_writes_total", result="ok") == 4
    assert rig.sample("dsguard_audit_violating_daemonsets", policy="log-collector") == 1
    assert rig.sample("dsguard_audit_violating_daemonsets", policy="gpu") == 0


async def test_second_audit_with_nothing_changed_writes_nothing() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    first = len(rig.writer.writes)
    rig.clock.now += timedelta(seconds=60)
    await rig.auditor.audit_once()
    assert len(rig.writer.writes) == first
    assert rig.sample("dsguard_audit_runs_total") == 2


async def test_an_audit_judges_again_only_what_changed() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    assert rig.sample("dsguard_audit_rejudged_daemonsets") == 4  # the first: every DaemonSet
    rig.clock.now += timedelta(seconds=10)
    await rig.auditor.audit_once()
    assert rig.sample("dsguard_audit_rejudged_daemonsets") == 0
    rig.auditor.daemonset_event(
        "MODIFIED", ds_obj("node-exporter", namespace="monitoring", max_unavailable=1)
    )
    await rig.auditor.audit_once()
    assert rig.sample("dsguard_audit_rejudged_daemonsets") == 1
    assert "monitoring/node-exporter" not in listed(rig.writer.last("exporters"))  # and it shows


async def test_watch_echo_of_the_audits_own_write_changes_nothing() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    woken: list[None] = []
    rig.cache.on_policies_changed = lambda: woken.append(None)
    for obj in policies():  # the apiserver hands each written status back through the watch
        name = obj["metadata"]["name"]
        rig.cache.policy_event("MODIFIED", {**obj, "status": rig.writer.last(name)})
    assert woken == []
    before = len(rig.writer.writes)
    rig.clock.now += timedelta(seconds=5)
    await rig.auditor.audit_once()
    assert len(rig.writer.writes) == before


async def test_steady_status_is_refreshed_near_resync() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    first = len(rig.writer.writes)
    rig.clock.now += timedelta(seconds=RESYNC)
    await rig.auditor.audit_once()
    refreshed = rig.writer.writes[first:]
    assert sorted(name for name, _ in refreshed) == ["broken", "exporters", "gpu", "log-collector"]
    assert {s["auditedAt"] for _, s in refreshed} == {"2030-01-01T00:05:00Z"}
    # nothing else moved: the conditions keep their transition time
    assert condition(rig.writer.last("gpu"), COMPLIANT)["lastTransitionTime"] == "2030-01-01T00:00:00Z"


async def test_new_tainted_node_reaudits_and_writes_the_affected_policy() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    first = len(rig.writer.writes)
    facts = rig.cache.facts
    tainted = node_obj("gpu-1", taints=[{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}])
    rig.cache.node_event("ADDED", tainted)
    assert rig.cache.facts is not facts
    rig.clock.now += timedelta(seconds=10)
    await rig.auditor.audit_once()
    assert rig.writer.names()[first:] == ["log-collector"]
    logs = rig.writer.last("log-collector")
    assert listed(logs) == {
        "logging/fluent-bit": ["coverage"],
        "logging/old-agent": ["coverage", "tolerations", "versions"],
    }
    assert "gpu-1" in logs["violations"][0]["message"]
    assert condition(logs, COMPLIANT)["lastTransitionTime"] == "2030-01-01T00:00:00Z"  # still False


async def test_invalid_edit_of_a_valid_policy_keeps_auditing_the_previous_version() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    rig.cache.policy_event(
        "MODIFIED", policy_obj("log-collector", {**LOG_COLLECTOR, "onMissing": "x"}, generation=4)
    )
    rig.clock.now += timedelta(seconds=10)
    await rig.auditor.audit_once()
    logs = rig.writer.last("log-collector")
    ready = condition(logs, READY)
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "InvalidSpec", 4)
    assert "spec.onMissing" in ready["message"]
    assert "still enforcing its previous valid version" in ready["message"]
    assert logs["violationCount"] == 1  # the previous version still judges
    assert condition(logs, COMPLIANT)["status"] == "False"


async def test_fixing_a_violation_flips_compliant() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    rig.auditor.daemonset_event("MODIFIED", ds_obj("old-agent", resource_version="101"))
    rig.clock.now += timedelta(seconds=10)
    await rig.auditor.audit_once()
    logs = rig.writer.last("log-collector")
    assert (logs["violationCount"], logs["violations"]) == (0, [])
    compliant = condition(logs, COMPLIANT)
    assert (compliant["status"], compliant["reason"]) == ("True", "NoViolations")
    assert compliant["lastTransitionTime"] == "2030-01-01T00:00:10Z"
    assert rig.sample("dsguard_audit_violating_daemonsets", policy="log-collector") == 0


async def test_deleted_policy_is_not_written_and_its_gauge_goes() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    assert rig.sample("dsguard_audit_violating_daemonsets", policy="exporters") == 1
    rig.cache.policy_event("DELETED", policy_obj("exporters", EXPORTERS))
    rig.auditor.daemonset_event(
        "MODIFIED", ds_obj("node-exporter", namespace="monitoring", max_unavailable=5)
    )
    first = len(rig.writer.writes)
    await rig.auditor.audit_once()
    assert "exporters" not in rig.writer.names()[first:]
    assert rig.sample("dsguard_audit_violating_daemonsets", policy="exporters") is None


async def test_static_policies_get_no_status_writes() -> None:
    cache = make_cache(policy_objs=policies()[:3], static=True)
    rig = make_rig(cache=cache)
    await rig.auditor.audit_once()
    assert rig.sample("dsguard_audit_runs_total") == 1  # it did audit
    assert rig.writer.attempts == 0


async def test_forbidden_write_is_logged_and_later_audits_still_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = RecordingWriter(fail=[403] * 4)
    rig = make_rig(writer=writer)
    with caplog.at_level(logging.ERROR, logger="dsguard.audit"):
        await rig.auditor.audit_once()
    assert writer.writes == [] and writer.attempts == 4
    errors = [
        r.getMessage() for r in caplog.records if r.name == "dsguard.audit" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 4
    assert all("HTTP 403" in m and "daemonsetpolicies/status" in m for m in errors)
    assert any("log-collector" in m for m in errors)
    assert rig.sample("dsguard_audit_status_writes_total", result="error") == 4
    # Events don't depend on the status write
    assert len(rig.events.of(VIOLATION_REASON)) == 3

    rig.clock.now += timedelta(seconds=1)
    await rig.auditor.audit_once()  # the permission came back
    assert sorted(writer.names()) == ["broken", "exporters", "gpu", "log-collector"]
    assert len(rig.events.of(VIOLATION_REASON)) == 3  # not announced twice


async def test_not_found_write_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    writer = RecordingWriter(fail=[404])
    rig = make_rig(writer=writer)
    with caplog.at_level(logging.DEBUG, logger="dsguard.audit"):
        await rig.auditor.audit_once()
    assert not [r for r in caplog.records if r.name == "dsguard.audit" and r.levelno >= logging.WARNING]
    assert len(writer.writes) == 3 and writer.attempts == 4  # the others were written
    # The policy that was gone is forgotten (until the watch brings it back), not written again
    # on every audit; the ones written keep what was written.
    (gone,) = {"broken", "exporters", "gpu", "log-collector"} - set(writer.names())
    assert gone not in rig.cache.policy_meta
    rig.clock.now += timedelta(seconds=1)
    await rig.auditor.audit_once()
    assert writer.attempts == 4


# -- Events ----------------------------------------------------------------------------------------


async def test_one_violation_event_per_daemonset_policy_rule() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    got = sorted(
        (b["involvedObject"]["namespace"], b["involvedObject"]["name"], b["message"])
        for b in rig.events.of(VIOLATION_REASON)
    )
    assert [(ns, name) for ns, name, _ in got] == [
        ("logging", "old-agent"),
        ("logging", "old-agent"),
        ("monitoring", "node-exporter"),
    ]
    assert 'DaemonSetPolicy "log-collector" (tolerations)' in got[0][2] + got[1][2]
    assert 'DaemonSetPolicy "log-collector" (versions)' in got[0][2] + got[1][2]
    assert 'DaemonSetPolicy "exporters" (rollout)' in got[2][2]
    for body in rig.events.of(VIOLATION_REASON):
        ref = body["involvedObject"]
        assert body["type"] == "Warning"
        assert ref["kind"] == "DaemonSet" and ref["uid"] == f"uid-{ref['namespace']}-{ref['name']}"
    assert rig.events.of(RESOLVED_REASON) == []


async def test_events_are_not_repeated_across_audits() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    count = len(rig.events.bodies)
    rig.auditor.daemonset_event(
        "MODIFIED", ds_obj("fluent-bit", resource_version="200", status={**STATUS, "numberReady": 1})
    )
    rig.cache.node_event("MODIFIED", node_obj("node-b", kubelet="v1.32.6"))  # new snapshot, same verdicts
    for _ in range(3):
        rig.clock.now += timedelta(seconds=30)
        await rig.auditor.audit_once()
    assert len(rig.events.bodies) == count == 3


async def test_resolved_event_when_fixed_and_only_once() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    rig.auditor.daemonset_event("MODIFIED", ds_obj("old-agent", tolerations=(), resource_version="101"))
    await rig.auditor.audit_once()  # 2.1.0 now: the versions violation is gone, the toleration still missing
    resolved = rig.events.of(RESOLVED_REASON)
    assert [(b["involvedObject"]["name"], b["type"]) for b in resolved] == [("old-agent", "Normal")]
    assert 'no longer violates DaemonSetPolicy "log-collector" (versions)' in resolved[0]["message"]
    assert resolved[0]["involvedObject"]["uid"] == "uid-logging-old-agent"
    assert len(rig.events.of(VIOLATION_REASON)) == 3
    await rig.auditor.audit_once()
    assert len(rig.events.of(RESOLVED_REASON)) == 1


async def test_violation_event_again_after_a_regression() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    rig.auditor.daemonset_event("MODIFIED", ds_obj("old-agent", resource_version="101"))
    await rig.auditor.audit_once()
    rig.auditor.daemonset_event(
        "MODIFIED", ds_obj("old-agent", image=f"{AGENT}:1.0.0", resource_version="102")
    )
    await rig.auditor.audit_once()
    versions = [b for b in rig.events.of(VIOLATION_REASON) if "(versions)" in b["message"]]
    assert len(versions) == 2


async def test_no_resolved_event_for_deleted_daemonset_or_policy() -> None:
    rig = make_rig()
    await rig.auditor.audit_once()
    rig.auditor.daemonset_event("DELETED", ds_obj("old-agent"))
    rig.cache.policy_event("DELETED", policy_obj("exporters", EXPORTERS))
    await rig.auditor.audit_once()
    assert rig.events.of(RESOLVED_REASON) == []
    # and coming back is a new violation again
    rig.auditor.daemonset_event("ADDED", ds_obj("old-agent", image=f"{AGENT}:1.9.0", tolerations=()))
    await rig.auditor.audit_once()
    assert rig.events.refs(VIOLATION_REASON).count(("logging", "old-agent")) == 4


async def test_restart_does_not_announce_violations_already_in_the_status() -> None:
    first = make_rig()
    await first.auditor.audit_once()
    stored = [
        {**obj, "status": first.writer.last(obj["metadata"]["name"])} for obj in policies()
    ]  # what the apiserver lists after the restart
    objs = [*daemonsets(), ds_obj("new-agent", image=f"{AGENT}:1.0.0")]  # and one violation that is new
    rig = make_rig(cache=make_cache(policy_objs=stored), ds_objs=objs)
    await rig.auditor.audit_once()
    assert rig.events.refs(VIOLATION_REASON) == [("logging", "new-agent")]
    assert rig.events.of(RESOLVED_REASON) == []
    assert rig.writer.names() == ["log-collector"]  # only the status that changed


async def test_at_most_max_events_per_audit(caplog: pytest.LogCaptureFixture) -> None:
    many = MAX_EVENTS_PER_AUDIT + 30
    objs = [ds_obj(f"agent-{i:03d}", image=f"{AGENT}:1.0.0") for i in range(many)]
    rig = make_rig(ds_objs=objs)
    with caplog.at_level(logging.WARNING, logger="dsguard.audit"):
        await rig.auditor.audit_once()
    assert len(rig.events.bodies) == MAX_EVENTS_PER_AUDIT
    assert any("30 Events not recorded" in r.getMessage() for r in caplog.records)
    logs = rig.writer.last("log-collector")
    assert logs["violationCount"] == many  # the status counts them all
    assert len(logs["violations"]) == MAX_LISTED
    assert logs["unlistedViolations"] == many - MAX_LISTED
    await rig.auditor.audit_once()
    assert len(rig.events.bodies) == MAX_EVENTS_PER_AUDIT


async def test_resolved_events_share_the_budget() -> None:
    many = MAX_EVENTS_PER_AUDIT + 10
    objs = [ds_obj(f"agent-{i:03d}", image=f"{AGENT}:1.0.0") for i in range(many)]
    rig = make_rig(ds_objs=objs)
    await rig.auditor.audit_once()
    rig.auditor.replace_daemonsets([ds_obj(f"agent-{i:03d}") for i in range(many)])  # all fixed
    await rig.auditor.audit_once()
    assert len(rig.events.of(RESOLVED_REASON)) == MAX_EVENTS_PER_AUDIT


async def test_failing_events_api_does_not_stop_the_audit() -> None:
    rig = make_rig(events=FakeEvents(fail=403))
    await rig.auditor.audit_once()
    assert sorted(rig.writer.names()) == ["broken", "exporters", "gpu", "log-collector"]


# -- the loop --------------------------------------------------------------------------------------


async def test_run_writes_then_reaudits_on_a_new_tainted_node() -> None:
    rig = make_rig(tick=0.02, min_interval=0.01)
    async with running(rig.auditor):
        await poll_async(lambda: len(rig.writer.writes) == 4, what="the first status writes")
        taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
        rig.cache.node_event(
            "ADDED", node_obj("gpu-1", taints=[taint])
        )  # no mark(): the new snapshot wakes it
        await poll_async(lambda: len(rig.writer.writes) > 4, what="the re-audit's write")
    assert rig.writer.names()[4:] == ["log-collector"]
    assert "gpu-1" in rig.writer.last("log-collector")["violations"][0]["message"]


async def test_daemonset_status_update_does_not_wake_the_auditor_but_a_spec_change_does() -> None:
    leader = LeaderFlag(True)
    rig = make_rig(tick=0.02, min_interval=0.01, is_leader=leader)
    async with running(rig.auditor):
        await poll_async(lambda: rig.sample("dsguard_audit_runs_total") == 1, what="the first audit")
        not_ready = {**STATUS, "numberReady": 0}
        rig.auditor.daemonset_event(
            "MODIFIED",
            ds_obj(
                "old-agent", image=f"{AGENT}:1.9.0", tolerations=(), resource_version="150", status=not_ready
            ),
        )
        passes = leader.calls
        await poll_async(lambda: leader.calls >= passes + 3, what="three more passes of the loop")
        assert rig.sample("dsguard_audit_runs_total") == 1
        rig.auditor.daemonset_event("MODIFIED", ds_obj("old-agent", resource_version="151"))
        await poll_async(lambda: rig.sample("dsguard_audit_runs_total") == 2, what="the re-audit")
    assert rig.writer.last("log-collector")["violationCount"] == 0


async def test_a_wake_shared_at_construction_wakes_the_audit() -> None:
    """guard.main hands the same wake-up to the policy cache and the leader election."""
    wake = asyncio.Event()
    rig = make_rig(tick=0.02, min_interval=0.01)
    auditor = Auditor(
        rig.cache, rig.writer, None, rig.metrics, wake=wake, resync=RESYNC, tick=60, min_interval=0.01
    )
    auditor.replace_daemonsets(daemonsets())  # as the watch lists: a wake-up too
    async with running(auditor):
        await poll_async(lambda: rig.sample("dsguard_audit_runs_total") == 1, what="the first audit")
        assert not wake.is_set()
        wake.set()  # say a policy changed: well before the 60 s tick
        await poll_async(lambda: rig.sample("dsguard_audit_runs_total") == 2, what="the re-audit")


async def test_not_leader_writes_nothing_until_it_leads() -> None:
    leader = LeaderFlag(False)
    rig = make_rig(tick=0.02, min_interval=0.01, is_leader=leader)
    async with running(rig.auditor):
        await poll_async(lambda: leader.calls >= 5, what="a few passes of the loop")
        assert rig.writer.attempts == 0 and rig.events.bodies == []
        assert rig.sample("dsguard_audit_runs_total") == 0
        leader.leading = True
        await poll_async(lambda: len(rig.writer.writes) == 4, what="the new leader's writes")


async def test_a_replica_that_stops_leading_drops_its_violation_gauges() -> None:
    """Only the leader exports dsguard_audit_violating_daemonsets, so dashboards and alerts that
    take the max over replicas see the current counts, not a former leader's last ones."""
    leader = LeaderFlag(True)
    rig = make_rig(tick=0.02, min_interval=0.01, is_leader=leader)
    async with running(rig.auditor):
        await poll_async(lambda: (rig.sample("dsguard_audit_runs_total") or 0) >= 1, what="the first audit")
        assert "dsguard_audit_violating_daemonsets{" in rig.exposition()
        leader.leading = False
        await poll_async(
            lambda: "dsguard_audit_violating_daemonsets{" not in rig.exposition(), what="the gauges dropped"
        )


async def test_a_replica_that_stops_leading_frees_the_incremental_audit_and_audits_in_full_when_back() -> (
    None
):
    leader = LeaderFlag(True)
    rig = make_rig(tick=0.02, min_interval=0.01, is_leader=leader)
    async with running(rig.auditor):
        await poll_async(lambda: (rig.sample("dsguard_audit_runs_total") or 0) >= 1, what="the first audit")
        assert rig.auditor.incremental.findings
        leader.leading = False
        await poll_async(lambda: not rig.auditor.incremental.findings, what="the walks and findings freed")
        leader.leading = True
        await poll_async(
            lambda: (rig.sample("dsguard_audit_runs_total") or 0) >= 2, what="the next term's audit"
        )
        assert len(rig.auditor.incremental.findings) == len(rig.auditor.daemonsets)


async def test_forbidden_write_is_retried_by_the_loop() -> None:
    writer = RecordingWriter(fail=[403])
    rig = make_rig(writer=writer, tick=0.02, min_interval=0.01)
    async with running(rig.auditor):
        await poll_async(lambda: len(set(writer.names())) == 4, what="every status written")
    assert rig.sample("dsguard_audit_runs_total") == 2


async def test_loop_waits_for_synced_daemonsets_and_cache() -> None:
    cache = make_cache(server_version=None)  # the apiserver version not read yet: not synced
    leader = LeaderFlag(True)
    rig = make_rig(cache=cache, tick=0.02, min_interval=0.01, is_leader=leader)
    async with running(rig.auditor):
        await poll_async(lambda: leader.calls >= 5, what="a few passes of the loop")
        assert rig.sample("dsguard_audit_runs_total") == 0
        cache.use_static_facts([], "v1.33.2")
        cache.replace_nodes(nodes())
        await poll_async(lambda: len(rig.writer.writes) == 4, what="the first audit")


def idle_rig(waiting_for: str, tick: float) -> tuple[Rig, LeaderFlag, Callable[[], None]]:
    """A loop that can't audit yet, with its wake flag set (replace_daemonsets sets it, as every
    policy change and DaemonSet spec change does), and what lets it audit."""
    leader = LeaderFlag(waiting_for != "leadership")
    cache = make_cache(server_version=None if waiting_for == "the cache to sync" else "v1.33.2")
    rig = make_rig(cache=cache, is_leader=leader, tick=tick, min_interval=0.01)

    def unstick() -> None:
        leader.leading = True
        cache.use_static_facts([], "v1.33.2")
        cache.replace_nodes(nodes())

    return rig, leader, unstick


WAITS = ["leadership", "the cache to sync"]


@pytest.mark.parametrize("waiting_for", WAITS)
async def test_idle_loop_waits_for_its_tick_instead_of_spinning(waiting_for: str) -> None:
    """A follower, or a leader whose caches aren't synced, can't audit, so nothing clears the wake
    flag: it must still sleep a tick between passes. The window is a rate measurement: with
    tick=1s there is time for one or two passes, not thousands."""
    rig, leader, unstick = idle_rig(waiting_for, tick=1.0)
    async with running(rig.auditor, unstick):
        await asyncio.sleep(0.25)
        passes, attempts = leader.calls, rig.writer.attempts
    assert attempts == 0
    assert passes <= 5, f"{passes} passes of the loop in 0.25s with tick=1s: a busy loop"


@pytest.mark.parametrize("waiting_for", WAITS)
async def test_idle_loop_stops_when_cancelled(waiting_for: str) -> None:
    """guard.main cancels every task at shutdown (lifecycle.cancel_and_wait) and waits for each."""
    rig, leader, unstick = idle_rig(waiting_for, tick=1.0)
    task = asyncio.create_task(rig.auditor.run())
    await poll_async(lambda: leader.calls >= 1, what="a pass of the loop")
    await asyncio.sleep(0)
    stopped = await stop(task)
    if not stopped:  # don't leak a busy task into the next tests
        unstick()
        assert await stop(task, insist=True), "still running after it could audit"
    assert stopped, "the audit loop ignored its cancellation (cancel_and_wait would hang at shutdown)"
