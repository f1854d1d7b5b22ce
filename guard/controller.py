"""The rollout guard's decide/act loop: marked DaemonSets -> rollout decision -> patch and alert.

The watches feed the guard's indexes (guard.store.Store), which mark the DaemonSets a change
concerns; a single loop decides for the marked ones at once and for all rollouts in progress on
a timer (deadlines pass without any event). Deciding is pure (guard.rollout.decide); only the
leader acts. Everything the guard did is recorded on the DaemonSet itself, so a restarted or
newly elected guard decides the same and does not act twice.

An action's alert goes into the DaemonSet's pending alerts in the same patch, and the outbox
(guard.outbox.Outbox) takes it off once every sink has settled it, or has it sent again by a
leader that did not send it itself: alerts are at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import ALERTS_PENDING, PAUSED_REVISION
from dsguard.policy import GuardPolicy, Policy, guard_policy_for
from dsguard.revisions import update_revision
from guard import actions
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert, AlertKind
from guard.outbox import Outbox
from guard.rollout import DaemonSetState, Decision, Step, decide
from guard.store import Dirty, Store

log = logging.getLogger("dsguard.guard")

# A DaemonSet is evaluated again at the earliest 9x its last evaluation's duration later (at most
# EVALUATION_DEFER_MAX): events in between are taken together. Deciding for a 5,000-pod
# DaemonSet takes about a millisecond, and a busy rollout brings thousands of pod events a
# second; without this the guard spent most of a core re-deciding (the decision is the same).
EVALUATION_DUTY = 0.1
EVALUATION_DEFER_MAX = 0.1

Notify = Callable[[Alert, GuardPolicy], None]  # routes an alert to the sinks of the policy that asked
PolicyLookup = Callable[[DaemonSetState], list[Policy]]  # the policies matching a DaemonSet, in order


class Governing(NamedTuple):
    """The policy whose guard section is in force for a DaemonSet (dsguard.policy.guard_policy_for)."""

    name: str
    guard: GuardPolicy


def _always() -> bool:
    return True


class Guard:
    def __init__(
        self,
        *,
        policies_for: PolicyLookup,
        patcher: actions.DaemonSetPatcher,
        outbox: Outbox,
        notify: Notify,
        dirty: Dirty,
        is_leader: Callable[[], bool] = _always,
        ready: Callable[[], bool] = _always,
        metrics: GuardMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,  # measures evaluations
    ) -> None:
        """`dirty`: the marks the guard takes its work from (its store marks them too; the outbox,
        a policy change and a new leader may). `ready`: whether the watches `policies_for` reads
        have listed; pending alerts are resent only once they have and the store's own have
        (before the policies are known, an alert would go to the Events only)."""
        self.policies_for = policies_for
        self.patcher = patcher
        self.outbox = outbox
        self.notify = notify
        self.dirty = dirty
        self.is_leader = is_leader
        self.ready = ready
        self.metrics = metrics or GuardMetrics()
        self.clock = clock
        self.tick = tick
        self.monotonic = monotonic
        self.timer = timer
        self.store = Store(on_change=dirty.mark, on_resumed=self._on_resumed, clock=clock)
        self._not_before: dict[str, float] = {}  # uid -> monotonic time it may be evaluated again
        self._was_ready = False
        # uid -> (resourceVersion, step): the version we last acted on (or whose patch conflicted).
        # Until the watch brings a newer version of that DaemonSet, deciding again would only
        # repeat the same patch. Every patch carries that resourceVersion as a precondition, so
        # the next version the watch brings is our own change (or the one that beat us to it).
        self._acted: dict[str, tuple[str, Step]] = {}
        self._failing: dict[str, int] = {}  # uid -> failing updated pods at its last evaluation
        self.decisions: list[tuple[str, Decision]] = []  # for tests and the log; bounded below

    def mark_all(self) -> None:
        self.dirty.mark_all()

    def _listed(self) -> bool:
        return self.store.synced and self.ready()

    def _governing(self, ds: DaemonSetState) -> Governing | None:
        name, guard = guard_policy_for(self.policies_for(ds))
        return None if name is None else Governing(name, guard)

    # -- deciding -------------------------------------------------------------------------
    def evaluate(self, uid: str) -> tuple[Decision, DaemonSetState, Governing] | None:
        tracked = self.store.daemonsets.get(uid)
        if tracked is None:
            return None
        governing = self._governing(tracked.state)
        if governing is None:
            return None
        revisions = self.store.revisions_of(uid)
        current = update_revision(revisions)
        updated = self.store.pods_on_revision(uid, current.hash) if current else ()
        decision = decide(
            tracked.state,
            revisions,
            updated,
            self.store.nodes,
            governing.guard,
            now=self.clock(),
            progress_since=tracked.progress_since,
        )
        return decision, tracked.state, governing

    def _take_everything(self) -> None:
        if self.dirty.everything:
            self.dirty.everything = False
            self.dirty.uids.update(self.store.daemonsets)

    async def run(self) -> None:
        dirty = self.dirty
        next_tick = self.monotonic() + self.tick
        while True:
            now = self.monotonic()
            wait = next_tick - now
            self._take_everything()
            if dirty.uids:  # deferred ones: wake when the first may go
                wait = min(wait, min(self._not_before.get(uid, now) for uid in dirty.uids) - now)
            if not dirty.wake.is_set() and wait > 0:
                # asyncio.timeout, not wait_for: no task per wait, and 3.11's wait_for could
                # swallow the cancellation at shutdown (the guard then hung until SIGKILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await dirty.wake.wait()
            dirty.wake.clear()
            if not self._was_ready and self._listed():
                self._was_ready = True
                self.mark_all()  # pending alerts can be resent now
            now = self.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick
                dirty.uids.update(self.store.in_progress())
                dirty.uids.update(self.store.rolling())  # pods not yet Ready may pass their deadline
            self._take_everything()
            due = {uid for uid in dirty.uids if self._not_before.get(uid, now) <= now}
            dirty.uids -= due
            await self.process(due)
            if not due:
                await asyncio.sleep(0)  # nothing due: let the watches run before waiting again

    async def process(self, uids: set[str]) -> None:
        for uid in uids:
            try:
                patched = await self._evaluate_and_act(uid)
                tracked = self.store.daemonsets.get(uid)
                ds = tracked.state if tracked is not None else None
                if self.is_leader():
                    resend = self._resend if self._listed() else None
                    await self.outbox.sync(uid, ds, patched=patched, resend=resend)
                else:
                    self.outbox.count(uid, ds)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One DaemonSet's odd object (its annotations are anyone's to write) must not stop
                # the guard for every other one; it is decided again at its next change.
                tracked = self.store.daemonsets.get(uid)
                log.exception("%s: evaluation failed", tracked.state.ref if tracked else uid)
                self.metrics.action_errors.labels("evaluate").inc()
        live = self.store.daemonsets
        for gone in [uid for uid in self._failing if uid not in live]:
            del self._failing[gone]
        for gone in [uid for uid in self._acted if uid not in live]:
            del self._acted[gone]
        for gone in [uid for uid in self._not_before if uid not in live]:
            del self._not_before[gone]
        self.outbox.tidy(live)
        self.metrics.watched.set(sum(1 for t in live.values() if not t.state.complete))
        self.metrics.failing_pods.set(sum(self._failing.values()))

    async def _evaluate_and_act(self, uid: str) -> bool:
        """Decide for one DaemonSet and, as the leader, act. Whether a patch was sent (even refused)."""
        started = self.timer()
        result = self.evaluate(uid)
        took = self.timer() - started
        self._not_before[uid] = self.monotonic() + min(EVALUATION_DEFER_MAX, took * (1 / EVALUATION_DUTY - 1))
        if result is None:
            self._failing.pop(uid, None)
            return False
        decision, ds, governing = result
        self._failing[uid] = len(decision.assessment.failing) if decision.assessment else 0
        if decision.step is Step.NONE or not self.is_leader():
            return False
        acted = self._acted.get(uid)
        if acted is not None and acted[0] == ds.resource_version:
            return False  # our patch (or the change that beat it) hasn't come through the watch yet
        self.decisions = [*self.decisions[-999:], (ds.ref, decision)]
        try:
            patched = await self.act(decision, ds, governing)
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

    def _resend(self, ds: DaemonSetState, alert: Alert) -> None:
        """A pending alert this process did not send, to the sinks of the DaemonSet's policy now
        (the Events only when no policy with a guard section matches it any more)."""
        _, guard = guard_policy_for(self.policies_for(ds))
        self.notify(alert, guard)

    # -- acting ---------------------------------------------------------------------------
    async def act(self, decision: Decision, ds: DaemonSetState, governing: Governing) -> bool:
        """Patch the DaemonSet for `decision`, its alert added to the pending alerts in the same
        patch, then send the alert to the sinks of `governing` (the policy `evaluate` decided
        under). Whether it patched (a rollback to the same template does not)."""
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
        alert = Alert(
            kind=kind,
            namespace=ds.namespace,
            daemonset=ds.name,
            uid=ds.uid,
            revision=alert_revision,
            summary=message,
            failing=failing,
            policy=governing.name,
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
        self.outbox.sent(alert)
        self.notify(alert, governing.guard)
        return True

    def _on_resumed(self, before: DaemonSetState, after: DaemonSetState) -> None:
        """Someone (dsguard resume, kubectl, or our own RESUME) took the pause off: say so."""
        revision = before.annotations.get(PAUSED_REVISION, "")
        if self._acted.get(after.uid) == (before.resource_version, Step.RESUME):
            return  # our own resume (the change right after the version we acted on) already alerted
        governing = self._governing(after)
        if governing is None or not self.is_leader():
            return
        message = f"resumed: the pause of revision {revision} was lifted"
        alert = Alert(
            kind=AlertKind.RESUMED,
            namespace=after.namespace,
            daemonset=after.name,
            uid=after.uid,
            revision=revision,
            summary=message,
            policy=governing.name,
            at=datetime.fromtimestamp(self.clock(), UTC),
        )
        self.notify(alert, governing.guard)
        log.info("%s: %s", after.ref, message)
