"""The rollout guard: watch events -> indexes -> rollout decision -> patch, Event and alerts.

One cluster-wide watch per resource (DaemonSets, ControllerRevisions, DaemonSet pods, Nodes).
Each event marks the affected DaemonSets dirty; a single loop decides for the dirty ones at once
and for all rollouts in progress on a timer (deadlines pass without any event). Deciding is
pure (guard.rollout.decide); only the leader acts. Everything the guard did is recorded on the
DaemonSet itself, so a restarted or newly elected guard decides the same and does not act twice.

Alerts are at least once: an action's patch also appends its alert to the DaemonSet's
dsguard.io/alerts-pending annotation (the outbox). Once every sink has settled the alert, the
leader removes it (a JSON patch that tests the exact value first). A leader that finds an entry it
did not send itself (its predecessor crashed, stopped or lost the lease first) sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import ALERTS_PENDING, PAUSED_REVISION
from dsguard.kube import Obj, name_of
from dsguard.pod_health import NodeHealth, PodView
from dsguard.policy import GuardPolicy, Policy
from dsguard.revisions import Revision, update_revision
from guard import actions
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert, AlertKind, rfc3339
from guard.rollout import DaemonSetState, Decision, Step, decide

log = logging.getLogger("dsguard.guard")

# A DaemonSet is evaluated again at the earliest 9x its last evaluation's duration later (at most
# EVALUATION_DEFER_MAX): events in between are taken together. Deciding for a 5,000-pod
# DaemonSet takes about a millisecond, and a busy rollout brings thousands of pod events a
# second; without this the guard spent most of a core re-deciding (the decision is the same).
EVALUATION_DUTY = 0.1
EVALUATION_DEFER_MAX = 0.1
# A settled alert not yet seen in its DaemonSet's pending alerts (the watch has not brought our
# own patch) is waited for this long; an alert this process sent is remembered this long after
# it left the annotation (a late watch event must not make it look like someone else's).
OUTBOX_MEMORY = 600.0

AlertId = tuple[str, str]  # (key, at): see actions.entry_id


def alert_id(alert: Alert) -> AlertId:
    return alert.key, rfc3339(alert.at)


PatchBody = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # a JSON patch is a list of operations


class DaemonSetPatcher(Protocol):
    async def patch(self, namespace: str, name: str, body: PatchBody, content_type: str) -> None: ...


Notify = Callable[[Alert, GuardPolicy], None]  # routes an alert to the sinks of the policy that asked


PolicyLookup = Callable[[DaemonSetState], list[Policy]]


@dataclass
class _Tracked:
    state: DaemonSetState
    progress: tuple[int, int, int, int] = (0, 0, 0, 0)
    progress_since: float = 0.0


@dataclass
class Store:
    """The guard's indexes, fed by the watches."""

    daemonsets: dict[str, _Tracked] = field(default_factory=dict)  # by uid
    revisions: dict[str, dict[str, Revision]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # owner uid -> name
    pods: dict[str, dict[str, PodView]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # owner uid -> name
    # owner uid -> controller-revision-hash -> name: a decision reads only the update revision's
    # pods, a few at the start of a rollout (when it matters most) rather than all of them
    by_revision: dict[str, dict[str, dict[str, PodView]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(dict))
    )
    pods_on_node: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    nodes: dict[str, NodeHealth] = field(default_factory=dict)


class Guard:
    def __init__(
        self,
        *,
        policies_for: PolicyLookup,
        patcher: DaemonSetPatcher,
        notify: Notify,
        metrics: GuardMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,  # measures evaluations
    ) -> None:
        self.store = Store()
        self.policies_for = policies_for
        self.patcher = patcher
        self.notify = notify
        self.metrics = metrics or GuardMetrics()
        self.clock = clock
        self.tick = tick
        self.monotonic = monotonic
        self.timer = timer
        self._not_before: dict[str, float] = {}  # uid -> monotonic time it may be evaluated again
        self.is_leader: Callable[[], bool] = lambda: True
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        # uid -> (resourceVersion, step): the version we last acted on (or whose patch conflicted).
        # Until the watch brings a newer version of that DaemonSet, deciding again would only
        # repeat the same patch. Every patch carries that resourceVersion as a precondition, so
        # the next version the watch brings is our own change (or the one that beat us to it).
        self._acted: dict[str, tuple[str, Step]] = {}
        self._failing: dict[str, int] = {}  # uid -> failing updated pods at its last evaluation
        self.decisions: list[tuple[str, Decision]] = []  # for tests and the log; bounded below
        # The outbox (dsguard.io/alerts-pending). Resending waits for `ready` (every watch listed):
        # before the policies are known, an alert would go to the Events only.
        self.ready: Callable[[], bool] = lambda: True
        self._was_ready = False
        # uid -> the pending alerts this process sent (or resent) -> when last seen pending
        self._submitted: dict[str, dict[AlertId, float]] = {}
        # uid -> settled alerts to take off the annotation -> since when
        self._to_clear: dict[str, dict[AlertId, float]] = {}
        # uid -> the annotation value a clear was sent against (or refused on): not again on it
        self._cleared_against: dict[str, str] = {}
        self._malformed_seen: dict[str, set[str]] = {}  # uid -> malformed entries already logged
        self._pending: dict[str, int] = {}  # uid -> entries in its pending alerts, as last seen

    # -- watch callbacks ------------------------------------------------------------------
    def replace_daemonsets(self, items: list[Obj]) -> None:
        seen = set()
        for obj in items:
            self.daemonset_event("ADDED", obj)
            seen.add(str((obj.get("metadata") or {}).get("uid", "")))
        for uid in list(self.store.daemonsets):
            if uid not in seen:
                del self.store.daemonsets[uid]

    def daemonset_event(self, kind: str, obj: Obj) -> None:
        ds = DaemonSetState.from_object(obj)
        if kind == "DELETED":
            self.store.daemonsets.pop(ds.uid, None)
            return
        now = self.clock()
        tracked = self.store.daemonsets.get(ds.uid)
        if tracked is None:
            self.store.daemonsets[ds.uid] = _Tracked(ds, ds.progress, now)
        else:
            if tracked.state.paused and not ds.paused:
                self._on_resumed(tracked.state, ds)
            if ds.progress != tracked.progress:
                tracked.progress, tracked.progress_since = ds.progress, now
            tracked.state = ds
        self._mark(ds.uid)

    def replace_revisions(self, items: list[Obj]) -> None:
        self.store.revisions.clear()
        for obj in items:
            self.revision_event("ADDED", obj)

    def revision_event(self, kind: str, obj: Obj) -> None:
        rev = Revision.from_object(obj)
        if rev is None:
            return
        if kind == "DELETED":
            self.store.revisions[rev.owner_uid].pop(rev.name, None)
        else:
            self.store.revisions[rev.owner_uid][rev.name] = rev
        self._mark(rev.owner_uid)

    def replace_pods(self, items: list[Obj]) -> None:
        self.store.pods.clear()
        self.store.by_revision.clear()
        self.store.pods_on_node.clear()
        for obj in items:
            self.pod_event("ADDED", obj)

    def pod_event(self, kind: str, obj: Obj) -> None:
        pod = PodView.from_pod(obj)
        if pod is None:
            return
        uid = pod.owner_uid
        pods, by_revision = self.store.pods[uid], self.store.by_revision[uid]
        old = pods.get(pod.name)
        if old is not None:
            if old.node != pod.node:
                self.store.pods_on_node[old.node].discard((uid, pod.name))
            if old.revision != pod.revision:
                self._unindex(by_revision, old)
        if kind == "DELETED":
            pods.pop(pod.name, None)
            self._unindex(by_revision, pod)
            self.store.pods_on_node[pod.node].discard((uid, pod.name))
            if not pods:
                del self.store.pods[uid], self.store.by_revision[uid]
        else:
            pods[pod.name] = pod
            by_revision[pod.revision][pod.name] = pod
            if pod.node:
                self.store.pods_on_node[pod.node].add((uid, pod.name))
        self._mark(uid)

    @staticmethod
    def _unindex(by_revision: dict[str, dict[str, PodView]], pod: PodView) -> None:
        names = by_revision.get(pod.revision)
        if names is not None:
            names.pop(pod.name, None)
            if not names:
                del by_revision[pod.revision]

    def replace_nodes(self, items: list[Obj]) -> None:
        self.store.nodes = {name_of(o): NodeHealth.from_node(o) for o in items}
        self.mark_all()

    def node_event(self, kind: str, obj: Obj) -> None:
        health = NodeHealth.from_node(obj)
        old = self.store.nodes.get(health.name)
        if kind == "DELETED":
            self.store.nodes.pop(health.name, None)
        else:
            self.store.nodes[health.name] = health
        if old is None or old.ready != health.ready:
            for uid, _ in self.store.pods_on_node.get(health.name, ()):
                self._mark(uid)

    def _mark(self, uid: str) -> None:
        self._dirty.add(uid)
        self._wake.set()

    def mark_all(self) -> None:
        self._dirty.update(self.store.daemonsets)
        self._wake.set()

    # -- deciding -------------------------------------------------------------------------
    def evaluate(self, uid: str) -> tuple[Decision, DaemonSetState, GuardPolicy] | None:
        tracked = self.store.daemonsets.get(uid)
        if tracked is None:
            return None
        policies = [p for p in self.policies_for(tracked.state) if p.guard is not None]
        if not policies:
            return None
        guard = policies[0].guard
        assert guard is not None
        revisions = self.store.revisions.get(uid, {}).values()
        current = update_revision(revisions)
        updated = self.store.by_revision.get(uid, {}).get(current.hash, {}) if current else {}
        decision = decide(
            tracked.state,
            revisions,
            updated.values(),
            self.store.nodes,
            guard,
            now=self.clock(),
            progress_since=tracked.progress_since,
        )
        return decision, tracked.state, guard

    async def run(self) -> None:
        next_tick = self.monotonic() + self.tick
        while True:
            now = self.monotonic()
            wait = next_tick - now
            if self._dirty:  # deferred ones: wake when the first may go
                wait = min(wait, min(self._not_before.get(uid, now) for uid in self._dirty) - now)
            if not self._wake.is_set() and wait > 0:
                # asyncio.timeout, not wait_for: no task per wait, and 3.11's wait_for could
                # swallow the cancellation at shutdown (the guard then hung until SIGKILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            self._wake.clear()
            if not self._was_ready and self.ready():
                self._was_ready = True
                self.mark_all()  # pending alerts can be resent now
            now = self.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick
                self._dirty.update(uid for uid, t in self.store.daemonsets.items() if not t.state.complete)
                self._dirty.update(self._rolling_uids())
            due = {uid for uid in self._dirty if self._not_before.get(uid, now) <= now}
            self._dirty -= due
            await self.process(due)
            if not due:
                await asyncio.sleep(0)  # nothing due: let the watches run before waiting again

    def _rolling_uids(self) -> set[str]:
        # pods not yet Ready may pass their deadline without any event
        return {uid for uid, pods in self.store.pods.items() if any(not p.ready for p in pods.values())}

    async def process(self, uids: set[str]) -> None:
        for uid in uids:
            try:
                patched = await self._evaluate_and_act(uid)
                if self.is_leader():
                    await self._outbox(uid, patched=patched)
                else:
                    self._count_pending(uid)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One DaemonSet's odd object (its annotations are anyone's to write) must not stop
                # the guard for every other one; it is decided again at its next change.
                tracked = self.store.daemonsets.get(uid)
                log.exception("%s: evaluation failed", tracked.state.ref if tracked else uid)
                self.metrics.action_errors.labels("evaluate").inc()
        for gone in [uid for uid in self._failing if uid not in self.store.daemonsets]:
            del self._failing[gone]
        for gone in [uid for uid in self._acted if uid not in self.store.daemonsets]:
            del self._acted[gone]
        for gone in [uid for uid in self._not_before if uid not in self.store.daemonsets]:
            del self._not_before[gone]
        self._forget_outbox()
        self.metrics.watched.set(sum(1 for t in self.store.daemonsets.values() if not t.state.complete))
        self.metrics.failing_pods.set(sum(self._failing.values()))
        self.metrics.alerts_pending.set(sum(self._pending.values()))

    async def _evaluate_and_act(self, uid: str) -> bool:
        """Decide for one DaemonSet and, as the leader, act. Whether a patch was sent (even refused)."""
        started = self.timer()
        result = self.evaluate(uid)
        took = self.timer() - started
        self._not_before[uid] = self.monotonic() + min(EVALUATION_DEFER_MAX, took * (1 / EVALUATION_DUTY - 1))
        if result is None:
            self._failing.pop(uid, None)
            return False
        decision, ds, guard = result
        self._failing[uid] = len(decision.assessment.failing) if decision.assessment else 0
        if decision.step is Step.NONE or not self.is_leader():
            return False
        acted = self._acted.get(uid)
        if acted is not None and acted[0] == ds.resource_version:
            return False  # our patch (or the change that beat it) hasn't come through the watch yet
        self.decisions = [*self.decisions[-999:], (ds.ref, decision)]
        try:
            patched = await self.act(decision, ds, guard)
            self._acted[uid] = (ds.resource_version, decision.step)
            return patched
        except ApiException as e:
            if e.status == 409:
                # The newer version's watch event marks the DaemonSet dirty: decide again then.
                log.info("%s changed while acting (%s); deciding again", ds.ref, decision.step)
                self._acted[uid] = (ds.resource_version, Step.NONE)
            else:
                log.error("%s: %s failed: %s %s", ds.ref, decision.step, e.status, e.reason)
                self.metrics.action_errors.labels(decision.step.value).inc()
        except actions.ResumeError as e:
            # a pause annotation someone broke: no patch can be built from this version
            log.error("%s: cannot %s: %s", ds.ref, decision.step, e)
            self.metrics.action_errors.labels(decision.step.value).inc()
            self._acted[uid] = (ds.resource_version, Step.NONE)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            # the apiserver unreachable: try again at the next evaluation; the loop must live on
            log.error("%s: %s failed: %s: %s", ds.ref, decision.step, type(e).__name__, e)
            self.metrics.action_errors.labels(decision.step.value).inc()
        return True

    # -- the outbox: dsguard.io/alerts-pending --------------------------------------------
    def alert_settled(self, alert: Alert) -> None:
        """Every sink is done with `alert` (AlertDispatcher's on_settled): take it off its DaemonSet."""
        ident = alert_id(alert)
        if ident not in self._submitted.get(alert.uid, {}):
            return  # not one of the pending alerts (a resume by someone else: best effort)
        self._to_clear.setdefault(alert.uid, {})[ident] = self.monotonic()
        self._mark(alert.uid)

    def will_resend(self, alert: Alert) -> bool:
        """Whether `alert` is pending on its DaemonSet: a guard that stops before it is delivered
        leaves it to the next one (AlertDispatcher's will_resend)."""
        return alert_id(alert) in self._submitted.get(alert.uid, {})

    def _count_pending(self, uid: str) -> None:
        tracked = self.store.daemonsets.get(uid)
        raw = tracked.state.annotations.get(ALERTS_PENDING) if tracked else None
        entries = actions.pending_entries(raw)
        count = 1 if entries is None else len(entries)
        if count:
            self._pending[uid] = count
        else:
            self._pending.pop(uid, None)

    async def _outbox(self, uid: str, *, patched: bool) -> None:
        """The leader's part: resend the pending alerts this process has not sent, and remove the
        settled and the malformed ones (not in the round it patched the DaemonSet for an action:
        that patch changed the value, so a clear made from the version it saw would be refused)."""
        self._count_pending(uid)
        tracked = self.store.daemonsets.get(uid)
        if tracked is None:
            return
        ds = tracked.state
        raw = ds.annotations.get(ALERTS_PENDING)
        if raw is None:
            return
        entries = actions.pending_entries(raw)
        drop: set[int] = set()
        alerts: list[tuple[int, Alert]] = []
        if entries is None:
            self._malformed(ds, raw, "not a JSON list")
        else:
            for i, entry in enumerate(entries):
                try:
                    alert = Alert.from_json(entry)
                    if alert.uid != ds.uid:  # copied from another DaemonSet (a backup restored?)
                        raise ValueError(f"the alert is about DaemonSet uid {alert.uid}")
                except ValueError as e:
                    self._malformed(ds, json.dumps(entry, sort_keys=True), str(e))
                    drop.add(i)
                else:
                    alerts.append((i, alert))
        submitted = self._submitted.setdefault(uid, {})
        now = self.monotonic()
        pending = {alert_id(a) for _, a in alerts}
        for ident in [
            i for i, since in submitted.items() if i not in pending and now - since > OUTBOX_MEMORY
        ]:
            del submitted[ident]  # long gone from the annotation
        if self.ready():
            for _, alert in alerts:
                self._resend(ds, alert)
        to_clear = self._to_clear.get(uid, {})
        cleared = [alert_id(a) for i, a in alerts if alert_id(a) in to_clear]
        drop.update(i for i, a in alerts if alert_id(a) in to_clear)
        if entries is not None and not drop:
            return
        if patched or self._cleared_against.get(uid) == raw:
            return  # wait for the watch to bring the version our patch made
        keep = [e for i, e in enumerate(entries or ()) if i not in drop]
        self._cleared_against[uid] = raw
        try:
            await self.patcher.patch(
                ds.namespace, ds.name, actions.clear_pending_patch(raw, keep), actions.JSON_PATCH
            )
        except ApiException as e:
            if e.status in (409, 422):  # changed in between: again once the watch brings the change
                log.info("%s: pending alerts changed while clearing; again at the next version", ds.ref)
            else:
                del self._cleared_against[uid]  # try again at the next evaluation
                log.error("%s: clearing delivered alerts failed: %s %s", ds.ref, e.status, e.reason)
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            del self._cleared_against[uid]
            log.error("%s: clearing delivered alerts failed: %s: %s", ds.ref, type(e).__name__, e)
            return
        for ident in cleared:
            to_clear.pop(ident, None)
        removed = len(entries) - len(keep) if entries is not None else 1
        log.info("%s: %d settled or malformed alert(s) taken off %s", ds.ref, removed, ALERTS_PENDING)

    def _resend(self, ds: DaemonSetState, alert: Alert) -> None:
        ident = alert_id(alert)
        submitted = self._submitted.setdefault(ds.uid, {})
        if ident in submitted:
            submitted[ident] = self.monotonic()  # still pending: forgotten only once it is gone
            return
        policies = [p for p in self.policies_for(ds) if p.guard is not None]
        guard = policies[0].guard if policies and policies[0].guard is not None else GuardPolicy()
        submitted[ident] = self.monotonic()
        self.metrics.alerts_resent.inc()
        log.warning(
            "%s: sending the pending %s alert of %s (key %s) again: the guard that acted did not settle it",
            ds.ref,
            alert.kind.value,
            rfc3339(alert.at),
            alert.key,
        )
        self.notify(alert, guard)

    def _malformed(self, ds: DaemonSetState, text: str, why: str) -> None:
        seen = self._malformed_seen.setdefault(ds.uid, set())
        if text not in seen:
            seen.add(text)
            log.error(
                "%s: dropping a malformed entry of %s (%s): %s", ds.ref, ALERTS_PENDING, why, text[:500]
            )

    def _pending_ids(self, uid: str) -> set[AlertId]:
        """The alerts pending in the DaemonSet's annotation now (still to clear when settled,
        however long this replica was not the leader)."""
        tracked = self.store.daemonsets.get(uid)
        entries = actions.pending_entries(tracked.state.annotations.get(ALERTS_PENDING) if tracked else None)
        ids: set[AlertId] = set()
        for entry in entries or ():
            with contextlib.suppress(ValueError):
                ids.add(alert_id(Alert.from_json(entry)))
        return ids

    def _forget_outbox(self) -> None:
        now = self.monotonic()
        live = self.store.daemonsets
        for uid in list(self._to_clear):
            entries = self._to_clear[uid]
            pending = self._pending_ids(uid)
            for ident in [i for i, since in entries.items() if now - since > OUTBOX_MEMORY]:
                if ident not in pending:  # never seen in the annotation (someone removed it?)
                    del entries[ident]
            if uid not in live or not entries:
                del self._to_clear[uid]
        for other in (self._submitted, self._cleared_against, self._malformed_seen, self._pending):
            for uid in [uid for uid in other if uid not in live]:
                del other[uid]

    # -- acting ---------------------------------------------------------------------------
    async def act(self, decision: Decision, ds: DaemonSetState, guard: GuardPolicy) -> bool:
        """Patch the DaemonSet for `decision`, its alert added to the pending alerts in the same
        patch, then send the alert. Whether it patched (a rollback to the same template does not)."""
        rev = decision.revision
        assert rev is not None
        at = datetime.fromtimestamp(self.clock(), UTC)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        summary = decision.assessment.summary() if decision.assessment else decision.note
        failing = decision.assessment.failing if decision.assessment else ()
        alert_revision = rev.hash
        content_type = actions.MERGE_PATCH
        if decision.step is Step.PAUSE:
            patch = actions.pause_patch(ds, rev.hash, summary, stamp)
            kind, message = AlertKind.PAUSED, f"paused the rollout: {summary}"
        elif decision.step is Step.ROLLBACK:
            previous = decision.previous
            assert previous is not None
            if actions.template_matches(ds, previous):
                return False
            patch = actions.rollback_patch(ds, rev.hash, previous, summary)
            content_type = actions.STRATEGIC_MERGE_PATCH
            kind = AlertKind.ROLLED_BACK
            message = f"rolled back to revision {previous.number} ({previous.hash}): {summary}"
        elif decision.step is Step.RESUME:
            patch = actions.resume_patch(ds)
            kind, message = AlertKind.RESUMED, f"resumed: {decision.note}"
            # about the paused revision: Alertmanager resolves that revision's paused alert with it
            alert_revision = ds.annotations.get(PAUSED_REVISION) or rev.hash
        elif decision.step is Step.STALLED:
            patch = actions.stalled_patch(ds, rev.hash)
            kind, message = AlertKind.STALLED, f"rollout stalled: {summary}"
        else:
            return False
        policy = next((p.name for p in self.policies_for(ds) if p.guard is guard), "")
        alert = Alert(
            kind=kind,
            namespace=ds.namespace,
            daemonset=ds.name,
            uid=ds.uid,
            revision=alert_revision,
            summary=message,
            failing=failing,
            policy=policy,
            at=at,
        )
        patch, dropped = actions.with_pending_alert(patch, ds, alert)
        if dropped:
            log.error(
                "%s: %d older pending alert(s) dropped from %s to keep it under %d bytes; "
                "they are no longer resent",
                ds.ref,
                dropped,
                ALERTS_PENDING,
                actions.MAX_PENDING_BYTES,
            )
        await self.patcher.patch(ds.namespace, ds.name, patch, content_type)
        self.metrics.actions.labels(decision.step.value).inc()
        log.warning("%s: %s", ds.ref, message)
        self._submitted.setdefault(ds.uid, {})[alert_id(alert)] = self.monotonic()
        self.notify(alert, guard)
        return True

    def _on_resumed(self, before: DaemonSetState, after: DaemonSetState) -> None:
        """Someone (dsguard resume, kubectl, or our own RESUME) took the pause off: say so."""
        revision = before.annotations.get(PAUSED_REVISION, "")
        if self._acted.get(after.uid) == (before.resource_version, Step.RESUME):
            return  # our own resume (the change right after the version we acted on) already alerted
        policies = [p for p in self.policies_for(after) if p.guard is not None]
        if not policies or not self.is_leader():
            return
        guard = policies[0].guard
        assert guard is not None
        message = f"resumed: the pause of revision {revision} was lifted"
        alert = Alert(
            kind=AlertKind.RESUMED,
            namespace=after.namespace,
            daemonset=after.name,
            uid=after.uid,
            revision=revision,
            summary=message,
            policy=policies[0].name,
            at=datetime.fromtimestamp(self.clock(), UTC),
        )
        self.notify(alert, guard)
        log.info("%s: %s", after.ref, message)
