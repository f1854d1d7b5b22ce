"""Background audit, the edges: when to audit, DaemonSetPolicy status writes, Events.

Runs in the guard process, on the leader only (one writer per status). Wakes on a DaemonSet
spec or label change, a policy change, a new facts snapshot (nodes, namespace labels: the
ClusterCache builds a new one only when something the rules read changed) and every `resync`
seconds; bursts are coalesced into one audit per `min_interval`. The judgement is
guard/policy_audit.py: incremental (only the DaemonSets a change can affect are judged again),
and every DaemonSet at a resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard import policy as policy_model
from dsguard.cluster_cache import ClusterCache
from dsguard.facts import ClusterFacts
from dsguard.kube import Obj, raw_body
from guard.metrics import GuardMetrics
from guard.notify.events import EventRecorder
from guard.notify.sinks import SinkError
from guard.policy_audit import (
    Announced,
    EventPlan,
    IncrementalAudit,
    ViolationKey,
    known_violations,
    plan_events,
    policy_status,
    status_changed,
)
from guard.policy_reports import PolicyReportWriter

log = logging.getLogger("dsguard.audit")

VIOLATION_REASON = "PolicyViolation"
RESOLVED_REASON = "PolicyViolationResolved"
# A new policy over a big cluster can flag hundreds of DaemonSets at once; the status counts them all.
MAX_EVENTS_PER_AUDIT = 100


class StatusWriter(Protocol):
    async def write(self, policy: str, status: Mapping[str, Any]) -> None: ...


class KubeStatusWriter:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    async def write(self, policy: str, status: Mapping[str, Any]) -> None:
        await raw_body(
            self.custom.patch_cluster_custom_object_status(  # type: ignore[call-arg]
                policy_model.GROUP, policy_model.VERSION, policy_model.PLURAL, policy,
                {"status": dict(status)},
                _content_type="application/merge-patch+json", _preload_content=False,
            )
        )  # fmt: skip


def _audit_view(obj: Obj) -> Obj:
    """What the rules read of a DaemonSet, and what the Events need (uid)."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in ("namespace", "name", "uid", "labels") if k in meta},
        "spec": obj.get("spec") or {},
    }


def _rfc3339(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Auditor:
    def __init__(
        self,
        cache: ClusterCache,
        writer: StatusWriter,
        recorder: EventRecorder | None,
        metrics: GuardMetrics,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        wake: asyncio.Event | None = None,
        resync: float = 300.0,
        min_interval: float = 1.0,
        tick: float = 1.0,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        reports: PolicyReportWriter | None = None,
    ) -> None:
        self.cache = cache
        self.reports = reports
        self.writer = writer
        self.recorder = recorder
        self.metrics = metrics
        self.is_leader = is_leader
        self.resync = resync
        self.min_interval = min_interval
        self.tick = tick
        self.now = now
        self.daemonsets: dict[tuple[str, str], Obj] = {}
        self.daemonsets_synced = False
        # set by mark(), or by whoever shares it (`wake`): a policy change, a new leader
        self._wake = wake if wake is not None else asyncio.Event()
        # A wake-up that couldn't be served yet (follower, caches not synced). The event itself is
        # cleared on every pass: left set, wait() would return at once and the loop would spin.
        self._pending = False
        self._retry_at: float | None = None  # after a failed status write, with backoff
        self._backoff = 1.0
        self._last_facts: ClusterFacts | None = None
        self._last_audit = -float("inf")
        self._last_full = -float("inf")
        self.incremental = IncrementalAudit()
        self._was_leader = False
        self._gauged: set[str] = set()
        # The violations reported so far, and what was said; None until loaded from the stored
        # statuses
        self._reported: dict[ViolationKey, Announced] | None = None

    # -- inputs --------------------------------------------------------------------------------
    def replace_daemonsets(self, items: list[Obj]) -> None:
        self.daemonsets = {}
        for obj in items:
            view = _audit_view(obj)
            self.daemonsets[self._key(view)] = view
        self.daemonsets_synced = True
        self.mark()

    def daemonset_event(self, kind: str, obj: Obj) -> None:
        view = _audit_view(obj)
        key = self._key(view)
        if kind == "DELETED":
            if self.daemonsets.pop(key, None) is not None:
                self.mark()
            return
        before = self.daemonsets.get(key)
        self.daemonsets[key] = view
        # Status updates (every pod that becomes ready) don't change what the rules judge.
        if before != view:
            self.mark()

    @staticmethod
    def _key(view: Obj) -> tuple[str, str]:
        meta = view["metadata"]
        return str(meta.get("namespace") or "default"), str(meta.get("name") or "")

    def mark(self) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------
    def _due(self) -> bool:
        if self._pending or self._wake.is_set():
            return True
        if self.cache.facts is not self._last_facts:
            return True
        now = time.monotonic()
        if self._retry_at is not None and now >= self._retry_at:
            return True
        return now - self._last_audit >= self.resync

    async def run(self) -> None:
        while True:
            # The tick notices new facts snapshots and resyncs. asyncio.timeout, not wait_for:
            # on 3.11 wait_for can swallow the cancellation that stops the guard.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()
            if self._wake.is_set():
                self._wake.clear()
                self._pending = True
            leading = self.is_leader()
            if self._was_leader and not leading:
                self._forget_gauges()  # a follower's stale counts would read as a second leader's
                # Its walks and findings (~100 MiB at 5,000 nodes) serve only a leader; a new
                # term starts from a full audit anyway.
                self.incremental = IncrementalAudit(patch_walks=self.incremental.patch_walks)
            if leading and not self._was_leader:
                self._reported = None  # re-read what the previous leader reported
                if self.reports is not None:
                    self.reports.relist()
                self._last_full = -float("inf")  # a new term starts from a full audit
                self._pending = True
            self._was_leader = leading
            if not leading or not self.daemonsets_synced or not self.cache.synced or not self._due():
                continue
            self._pending = False
            self._retry_at = None
            try:
                await self.audit_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad audit stop the next ones
                log.exception("audit failed; retrying at the next change or resync")
            if self._retry_at is None:
                self._backoff = 1.0  # every write went through
            await asyncio.sleep(self.min_interval)

    async def audit_once(self) -> None:
        facts = self.cache.facts
        policies = self.cache.policies
        started = time.perf_counter()
        on_judged = self.reports.judged if self.reports is not None else None
        full = time.monotonic() - self._last_full >= self.resync
        results = self.incremental.run(policies, self.daemonsets, facts, full=full, on_judged=on_judged)
        if full:
            self._last_full = time.monotonic()
        self.metrics.audit_seconds.observe(time.perf_counter() - started)
        self.metrics.audit_rejudged.set(self.incremental.rejudged)
        self.metrics.audits.inc()
        self._last_facts = facts
        self._last_audit = time.monotonic()
        now = _rfc3339(self.now())
        meta = self.cache.policy_meta
        if self._reported is None:
            self._reported = {}
            for name, (_, stored) in meta.items():
                self._reported.update(known_violations(stored, name))
        names = sorted(set(meta) | set(results))
        for name in names:
            if name not in meta:
                continue  # a static policy (--policy-file) has no object to write a status to
            generation, stored = meta[name]
            result = results.get(name)
            error = self.cache.policy_errors.get(name)
            self.metrics.violating.labels(name).set(len(result.violating) if result else 0)
            self._gauged.add(name)
            new = policy_status(
                result, error=error, enforced=result is not None, generation=generation, previous=stored,
                now=now,
            )  # fmt: skip
            # A steady cluster still refreshes auditedAt now and then, so it shows the audit runs.
            stale = _older_than(stored.get("auditedAt"), self.now(), self.resync * 0.9)
            if status_changed(new, stored) or stale:
                await self._write(name, new)
        for gone in self._gauged - set(meta):
            self.metrics.violating.remove(gone)
        self._gauged &= set(meta)
        present = set(self.daemonsets)
        # A changed violation is announced again at most once a resync period (--audit-resync).
        plan, self._reported = plan_events(
            results, self._reported, present, now=time.monotonic(), change_interval=self.resync
        )
        await self._record(plan)
        if self.reports is not None and not await self.reports.sync(present):
            self._retry_later("policy reports are not up to date")

    def _forget_gauges(self) -> None:
        for name in self._gauged:
            self.metrics.violating.remove(name)
        self._gauged.clear()

    async def _write(self, name: str, status: Mapping[str, Any]) -> None:
        try:
            await self.writer.write(name, status)
            self.metrics.audit_writes.labels("ok").inc()
            # Keep what was written, so a status the watch hasn't echoed yet isn't written twice
            # (unless the policy was deleted meanwhile: then there is nothing to keep).
            if name in self.cache.policy_meta:
                generation, _ = self.cache.policy_meta[name]
                self.cache.policy_meta[name] = (generation, status)
        except ApiException as e:
            self.metrics.audit_writes.labels("error").inc()
            if e.status == 404:  # deleted since the audit began; the watch will say so too
                self.cache.policy_meta.pop(name, None)
                if name in self._gauged:
                    self.metrics.violating.remove(name)
                    self._gauged.discard(name)
                return
            hint = " (the guard needs patch on daemonsetpolicies/status)" if e.status == 403 else ""
            self._retry_later(
                f"writing the status of DaemonSetPolicy {name} failed: HTTP {e.status} {e.reason}{hint}"
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.metrics.audit_writes.labels("error").inc()
            self._retry_later(f"writing the status of DaemonSetPolicy {name} failed: {type(e).__name__}: {e}")

    def _retry_later(self, what: str) -> None:
        log.error("%s; retrying in %.0fs", what, self._backoff)
        if self._retry_at is None:  # one backoff step per audit, however many policies failed
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, max(self.resync, 1.0))

    async def _record(self, plan: EventPlan) -> None:
        if self.recorder is None:
            return
        new, changed, resolved = plan.new, plan.changed, plan.resolved
        budget = MAX_EVENTS_PER_AUDIT
        for v in new[:budget]:
            await self._event(
                v.namespace, v.name, VIOLATION_REASON,
                f'violates DaemonSetPolicy "{v.policy}" ({v.rule}): {v.message}', warning=True,
            )  # fmt: skip
        budget -= min(len(new), budget)
        for (policy, namespace, name, rule), messages in changed[:budget]:
            await self._event(
                namespace, name, VIOLATION_REASON,
                f'still violates DaemonSetPolicy "{policy}" ({rule}), now: {"; ".join(messages)}',
                warning=True,
            )  # fmt: skip
        budget -= min(len(changed), budget)
        for policy, namespace, name, rule in resolved[:budget]:
            await self._event(
                namespace, name, RESOLVED_REASON,
                f'no longer violates DaemonSetPolicy "{policy}" ({rule})', warning=False,
            )  # fmt: skip
        skipped = len(new) + len(changed) + len(resolved) - MAX_EVENTS_PER_AUDIT
        if skipped > 0:
            log.warning(
                "audit: %d Events not recorded (at most %d an audit); the policies' status counts all",
                skipped, MAX_EVENTS_PER_AUDIT,
            )  # fmt: skip

    async def _event(self, namespace: str, name: str, reason: str, message: str, *, warning: bool) -> None:
        assert self.recorder is not None
        view = self.daemonsets.get((namespace, name))
        uid = str(((view or {}).get("metadata") or {}).get("uid") or "")
        try:
            await self.recorder.record(
                namespace=namespace, name=name, uid=uid, reason=reason, action="Audit", message=message,
                warning=warning,
            )  # fmt: skip
        except SinkError as e:
            log.warning("audit Event not recorded (the status still has it): %s", e)


def _older_than(stamp: object, now: dt.datetime, seconds: float) -> bool:
    if not isinstance(stamp, str):
        return True
    try:
        then = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return True
    return (now - then).total_seconds() >= seconds
