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
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard import reconnect
from dsguard.annotations import (
    ALERTS_PENDING,
    ORIGINAL_STRATEGY,
    PAUSED_REVISION,
    gate_baseline,
    rollback_info,
    rolled_back_here,
    wave_info,
    waves_in_progress,
)
from dsguard.daemonset import ON_DELETE, as_mapping
from dsguard.log_context import ObjectRef, about
from dsguard.policy import GuardAction, GuardPolicy, Policy, guard_policy_for
from dsguard.revisions import previous_revision, update_revision
from dsguard.waves import Wave, WaveDecision, WaveStep, decide_waves
from guard import actions, wave_actions
from guard.gates import GateResult, GateStatus, judge_apiserver, judge_prometheus
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
# An action the apiserver refused (5xx, 429, 403) or could not take (unreachable) is tried again
# after 1 s, doubling to 30 s while it keeps failing (a Retry-After is honoured): a guard without
# RBAC, or an overloaded apiserver, gets a log line and a request a while, not every tick.
ACTION_RETRY_FIRST = 1.0
ACTION_RETRY_CAP = 30.0

Notify = Callable[[Alert, GuardPolicy], None]  # routes an alert to the sinks of the policy that asked
PolicyLookup = Callable[[DaemonSetState], list[Policy]]  # the policies matching a DaemonSet, in order


class PodDeleter(Protocol):
    async def delete(self, namespace: str, name: str, uid: str) -> bool:
        """Delete exactly this pod (uid precondition); False when it was already gone or replaced."""
        ...


class GateProbes(Protocol):
    """What the gates measure (guard.gate_probes): the apiserver's request rate now and over the
    baseline window, and a Prometheus query's value (or why it has none)."""

    def apiserver_baseline(self) -> float | None: ...

    def apiserver_current(self) -> float | None: ...

    async def prometheus(self, index: int, gate: object) -> tuple[float | None, str]: ...


# Records an Event on a DaemonSet: (ds, reason, message, warning).
RecordEvent = Callable[[DaemonSetState, str, str, bool], Awaitable[None]]


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
        current: Callable[[], bool] = _always,
        metrics: GuardMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,  # measures evaluations
        pods: PodDeleter | None = None,
        gates: GateProbes | None = None,
        record_event: RecordEvent | None = None,
    ) -> None:
        """`dirty`: the marks the guard takes its work from (its store marks them too; the outbox,
        a policy change and a new leader may). `ready`: whether the watches `policies_for` reads
        have listed; pending alerts are resent only once they have and the store's own have
        (before the policies are known, an alert would go to the Events only). `current`: whether
        every watch is current (none failing since its last list): while one is not, the guard
        is blind to part of the cluster and acts on nothing; when they all are again, it decides
        for every DaemonSet at once, so what became due meanwhile is done then (once: the
        relisted objects show what was already done)."""
        self.policies_for = policies_for
        self.patcher = patcher
        self.outbox = outbox
        self.notify = notify
        self.dirty = dirty
        self.is_leader = is_leader
        self.ready = ready
        self.current = current
        self._was_current = True
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
        self._action_failures: dict[str, int] = {}  # uid -> actions failed in a row (the backoff)
        self.decisions: list[tuple[str, Decision]] = []  # for tests and the log; bounded below
        self.pods = pods
        self.gates = gates
        self.record_event = record_event
        # Wave rollouts: pods (by uid) this process deleted that the watch hasn't shown deleting
        # yet, per DaemonSet uid: counted as unavailable, so the budget is never overspent.
        self._deleted: dict[str, set[str]] = {}
        self._gate_errors: dict[tuple[str, str, str], str] = {}  # (uid, revision, gate) -> last error
        self.wave_decisions: list[tuple[str, WaveDecision]] = []  # for tests and the log; bounded

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
            current = self.current()
            if current != self._was_current:
                self._was_current = current
                if current:
                    log.warning("every watch is current again: deciding for every DaemonSet")
                    self.mark_all()  # what became due while blind, now
                else:
                    log.warning("a watch is not current: deciding nothing until it has listed again")
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
            known = self.store.daemonsets.get(uid)
            # Every line logged while deciding for it names it (--log-format json: `object`).
            with about(ObjectRef.of("DaemonSet", known.state.ref) if known is not None else None):
                await self._process_one(uid)
        self._tidy()

    async def _process_one(self, uid: str) -> None:
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

    def _tidy(self) -> None:
        live = self.store.daemonsets
        for gone in [uid for uid in self._failing if uid not in live]:
            del self._failing[gone]
        for gone in [uid for uid in self._acted if uid not in live]:
            del self._acted[gone]
        for gone in [uid for uid in self._not_before if uid not in live]:
            del self._not_before[gone]
        for gone in [uid for uid in self._deleted if uid not in live]:
            del self._deleted[gone]
        for gone in [uid for uid in self._action_failures if uid not in live]:
            del self._action_failures[gone]
        for key in [k for k in self._gate_errors if k[0] not in live]:
            del self._gate_errors[key]
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
        if not self.is_leader() or not self.current():
            return False  # a follower, or blind: the decision may rest on what it no longer sees
        if decision.step is Step.NONE and governing.guard.waves is not None:
            failed = await self._check_gates(decision, ds, governing)
            if failed is None:
                return await self._drive_waves(uid, decision, ds, governing)
            decision = failed
        if decision.step is Step.NONE:
            return False
        acted = self._acted.get(uid)
        if acted is not None and acted[0] == ds.resource_version:
            return False  # our patch (or the change that beat it) hasn't come through the watch yet
        self.decisions = [*self.decisions[-999:], (ds.ref, decision)]
        try:
            patched = await self.act(decision, ds, governing)
            self._acted[uid] = (ds.resource_version, decision.step)
            self._action_failures.pop(uid, None)
            return patched
        except ApiException as e:
            if e.status == 409:
                # The newer version's watch event marks the DaemonSet dirty: decide again then.
                log.info("%s changed while acting (%s); deciding again", ds.ref, decision.step)
                self._acted[uid] = (ds.resource_version, Step.NONE)
            else:
                delay = self._retry_action(uid, e)
                log.error(
                    "%s: %s failed: %s %s; trying again in %.0fs",
                    ds.ref,
                    decision.step,
                    e.status,
                    e.reason,
                    delay,
                )
                self.metrics.action_errors.labels(decision.step.value).inc()
        except actions.ResumeError as e:
            # a pause annotation someone broke: no patch can be built from this version
            log.error("%s: cannot %s: %s", ds.ref, decision.step, e)
            self.metrics.action_errors.labels(decision.step.value).inc()
            self._acted[uid] = (ds.resource_version, Step.NONE)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            # the apiserver unreachable: try again after the backoff; the loop must live on
            delay = self._retry_action(uid, e)
            log.error(
                "%s: %s failed: %s: %s; trying again in %.0fs",
                ds.ref,
                decision.step,
                type(e).__name__,
                e,
                delay,
            )
            self.metrics.action_errors.labels(decision.step.value).inc()
        return True

    def _retry_action(self, uid: str, error: BaseException) -> float:
        """Defer the DaemonSet's next evaluation after a failed action; the seconds until then."""
        failures = self._action_failures.get(uid, 0)
        self._action_failures[uid] = failures + 1
        after = reconnect.retry_after(error)
        delay = (
            after
            if after is not None
            else min(ACTION_RETRY_FIRST * 2.0 ** min(failures, 16), ACTION_RETRY_CAP)
        )
        self._not_before[uid] = max(self._not_before.get(uid, 0.0), self.monotonic() + delay)
        return delay

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
        summary = decision.summary()
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
        if decision.step in (Step.PAUSE, Step.ROLLBACK):
            where = self._wave_position(ds)
            if where:
                message += f" ({where})"
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

    # -- wave rollouts (spec.guard.waves; dsguard.waves decides) ----------------------------------
    def _wave_position(self, ds: DaemonSetState) -> str:
        """ "wave rollout at wave 2", for the pause and rollback alerts ("" without one)."""
        info = wave_info(ds.annotations)
        if info is None or not waves_in_progress(ds.annotations):
            return ""
        return f"wave rollout at wave {info.index + 1}"

    def _waving(self, decision: Decision, ds: DaemonSetState) -> bool:
        """Whether the guard may drive this DaemonSet's rollout in waves now."""
        rev = decision.revision
        if rev is None or ds.paused or rolled_back_here(ds.annotations, rev.hash):
            return False
        if ds.observed_generation < ds.generation:
            return False
        back = rollback_info(ds.annotations, rev.hash, generation_observed=True)
        if back is not None and back.current:
            return False  # the guard's own rollback: the user's strategy brings every node back at once
        if previous_revision(self.store.revisions_of(ds.uid)) is None:
            return False  # a first revision is a creation, not a rollout
        # The user's own OnDelete is theirs to drive; OnDelete with the recorded strategy is the
        # webhook's (or our) takeover.
        return ds.strategy_type != ON_DELETE or ORIGINAL_STRATEGY in ds.annotations

    def _user_strategy(self, ds: DaemonSetState) -> Mapping[str, object]:
        try:
            return actions.original_strategy(ds)
        except actions.ResumeError:
            return ds.strategy

    async def _drive_waves(
        self, uid: str, decision: Decision, ds: DaemonSetState, governing: Governing
    ) -> bool:
        waves = governing.guard.waves
        rev = decision.revision
        if waves is None or rev is None or not self._waving(decision, ds):
            return False
        acted = self._acted.get(uid)
        if acted is not None and acted[0] == ds.resource_version and acted[1] is not Step.NONE:
            return False  # our last patch hasn't come through the watch yet
        pods = list(self.store.pods.get(uid, {}).values())
        deleted = self._deleted.get(uid, set())
        if deleted:  # forget the ones the watch shows deleting (or gone) now
            live = {p.uid for p in pods if not p.deleting}
            deleted &= live
        wave = decide_waves(
            annotations=ds.annotations,
            revision=rev.hash,
            pods=pods,
            node_labels=self.store.node_labels(),
            nodes=self.store.targeted(as_mapping(ds.template.get("spec"))),
            policy=waves,
            user_strategy=self._user_strategy(ds),
            min_ready_seconds=ds.min_ready_seconds,
            now=self.clock(),
            deleted=deleted,
        )
        if wave.step in (WaveStep.NONE, WaveStep.WAIT):
            return False
        self.wave_decisions = [*self.wave_decisions[-999:], (ds.ref, wave)]
        # To the microsecond: a bake is timed from it, and whole seconds would cut it short.
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if wave.step is WaveStep.DELETE:
            return await self._delete_pods(uid, ds, wave)
        if wave.step is WaveStep.START:
            baselines = self._baselines(governing)
            patch = wave_actions.start_patch(ds, rev.hash, wave.takeover, stamp, baselines=baselines)
            late = (
                f"; the webhook did not take the change over: the DaemonSet controller had replaced "
                f"{wave.takeover} pod(s) before the guard switched to OnDelete"
                if ds.strategy_type != ON_DELETE
                else ""
            )
            event = (
                "WaveRolloutStarted",
                f"rolling out revision {rev.hash} in {_plan_text(wave.waves)}{late}",
            )
        elif wave.step is WaveStep.BAKE:
            patch = wave_actions.bake_patch(ds, stamp)
            w = wave.waves[wave.wave]
            event = (
                "WaveBaking",
                f"wave {wave.wave + 1}/{len(wave.waves)} ({w.name}, {len(w.nodes)} nodes) updated and "
                f"available; baking {waves.bake_seconds}s",
            )
        elif wave.step is WaveStep.ADVANCE:
            patch = wave_actions.advance_patch(ds, wave.wave, stamp)
            w = wave.waves[wave.wave]
            event = (
                "WaveStarted",
                f"wave {wave.wave + 1}/{len(wave.waves)} ({w.name}, {len(w.nodes)} nodes) started",
            )
        else:  # COMPLETE
            patch = wave_actions.complete_patch(ds, rev.hash)
            event = (
                "WaveRolloutCompleted",
                f"revision {rev.hash} rolled out on every node in {len(wave.waves)} wave(s); "
                f"updateStrategy {json.dumps(patch['spec']['updateStrategy'])} restored",
            )
        try:
            await self.patcher.patch(ds.namespace, ds.name, patch, actions.MERGE_PATCH)
        except ApiException as e:
            if e.status == 409:
                log.info("%s changed while acting (wave %s); deciding again", ds.ref, wave.step)
            else:
                delay = self._retry_action(uid, e)
                log.error(
                    "%s: wave %s failed: %s %s; trying again in %.0fs",
                    ds.ref,
                    wave.step,
                    e.status,
                    e.reason,
                    delay,
                )
                self.metrics.action_errors.labels(f"wave_{wave.step.value}").inc()
            self._acted[uid] = (ds.resource_version, Step.NONE)
            return True
        except actions.ResumeError as e:
            log.error("%s: cannot complete the wave rollout: %s", ds.ref, e)
            self.metrics.action_errors.labels(f"wave_{wave.step.value}").inc()
            # Not again at this version (once per change of the DaemonSet, not every tick).
            self._acted[uid] = (ds.resource_version, Step.WAVE)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            delay = self._retry_action(uid, e)
            log.error(
                "%s: wave %s failed: %s: %s; trying again in %.0fs",
                ds.ref,
                wave.step,
                type(e).__name__,
                e,
                delay,
            )
            self.metrics.action_errors.labels(f"wave_{wave.step.value}").inc()
            return True
        self._acted[uid] = (ds.resource_version, Step.WAVE)
        self._action_failures.pop(uid, None)
        self.metrics.actions.labels(f"wave_{wave.step.value}").inc()
        log.info("%s: %s: %s", ds.ref, event[0], event[1])
        if wave.step is WaveStep.COMPLETE and waves.alert_on_completion:
            # The alert's Event sink records the Event; best effort, like a manual resume's alert.
            alert = Alert(
                kind=AlertKind.COMPLETED,
                namespace=ds.namespace,
                daemonset=ds.name,
                uid=ds.uid,
                revision=rev.hash,
                summary=event[1],
                policy=governing.name,
                at=datetime.fromtimestamp(self.clock(), UTC),
            )
            self.notify(alert, governing.guard)
        else:
            await self._event(ds, event[0], event[1], warning=False)
        return True

    async def _delete_pods(self, uid: str, ds: DaemonSetState, wave: WaveDecision) -> bool:
        if self.pods is None:
            return False
        deleted = self._deleted.setdefault(uid, set())
        failed: BaseException | None = None
        for pod in wave.delete:
            if pod.uid in deleted:
                continue
            deleted.add(pod.uid)  # before the call: a concurrent evaluation must count it
            try:
                gone = await self.pods.delete(pod.namespace, pod.name, pod.uid)
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as e:
                deleted.discard(pod.uid)
                log.error("%s: deleting pod %s failed: %s", ds.ref, pod.name, e)
                self.metrics.action_errors.labels("wave_delete").inc()
                failed = e
                continue
            self.metrics.actions.labels("wave_delete").inc()
            log.info(
                "%s: wave %d/%d (%s): deleted pod %s on %s%s",
                ds.ref,
                wave.wave + 1,
                len(wave.waves),
                wave.waves[wave.wave].name,
                pod.name,
                pod.node,
                "" if gone else " (already gone)",
            )
        if failed is not None:
            self._retry_action(uid, failed)
        elif wave.delete:
            self._action_failures.pop(uid, None)
        return False

    def _baselines(self, governing: Governing) -> dict[str, float] | None:
        gates = governing.guard.gates
        if gates is None or gates.apiserver is None or self.gates is None:
            return None
        baseline = self.gates.apiserver_baseline()
        return None if baseline is None else {"apiserver": round(baseline, 3)}

    async def _check_gates(
        self, decision: Decision, ds: DaemonSetState, governing: Governing
    ) -> Decision | None:
        """A PAUSE or ROLLBACK decision when a gate of a wave rollout in progress is over its
        limit; None otherwise. A gate that can't be measured is alerted once per revision."""
        gates = governing.guard.gates
        rev = decision.revision
        if gates is None or rev is None or self.gates is None or ds.paused:
            return None
        if not waves_in_progress(ds.annotations, rev.hash):
            return None
        results: list[GateResult] = []
        if gates.apiserver is not None:
            baseline = gate_baseline(ds.annotations, "apiserver")
            if baseline is None:
                measured = self.gates.apiserver_baseline()
                if measured is not None:  # started before the sampler had a minute: record it now
                    patch = wave_actions.baselines_patch(ds, {"apiserver": round(measured, 3)})
                    with contextlib.suppress(ApiException, aiohttp.ClientError, TimeoutError, OSError):
                        await self.patcher.patch(ds.namespace, ds.name, patch, actions.MERGE_PATCH)
                    return None
            results.append(judge_apiserver(gates.apiserver, baseline, self.gates.apiserver_current()))
        for i, gate in enumerate(gates.prometheus):
            value, error = await self.gates.prometheus(i, gate)
            results.append(judge_prometheus(i, gate, value, error))
        for r in results:
            key = (ds.uid, rev.hash, r.gate)
            if r.status is GateStatus.ERROR:
                if self._gate_errors.get(key) is None:
                    self._gate_errors[key] = r.message
                    self._gate_error_alert(ds, rev.hash, governing, r)
            else:
                self._gate_errors.pop(key, None)
        failed = [r for r in results if r.status is GateStatus.FAIL]
        if not failed:
            return None
        reason = "gate over its limit: " + "; ".join(r.message for r in failed)
        if governing.guard.action is GuardAction.ROLLBACK:
            previous = previous_revision(self.store.revisions_of(ds.uid))
            if previous is not None:
                return Decision(Step.ROLLBACK, rev, decision.assessment, previous, reason=reason)
        return Decision(Step.PAUSE, rev, decision.assessment, reason=reason)

    def _gate_error_alert(
        self, ds: DaemonSetState, revision: str, governing: Governing, result: GateResult
    ) -> None:
        log.error("%s: gate %s could not be measured: %s", ds.ref, result.gate, result.message)
        self.metrics.action_errors.labels("gate").inc()
        alert = Alert(
            kind=AlertKind.GATE_ERROR,
            namespace=ds.namespace,
            daemonset=ds.name,
            uid=ds.uid,
            revision=revision,
            summary=f"wave rollout gate {result.gate} could not be measured (no action taken): "
            f"{result.message}",
            policy=governing.name,
            at=datetime.fromtimestamp(self.clock(), UTC),
        )
        self.notify(alert, governing.guard)

    async def _event(self, ds: DaemonSetState, reason: str, message: str, *, warning: bool) -> None:
        if self.record_event is None:
            return
        try:
            await self.record_event(ds, reason, message, warning)
        except Exception as e:  # an Event is a record for people; the rollout goes on without it
            log.warning("%s: Event %s not recorded: %s", ds.ref, reason, e)


def _plan_text(waves: tuple[Wave, ...]) -> str:
    parts = [f"{w.name} ({len(w.nodes)})" for w in waves[:6]]
    more = f", ... ({len(waves) - 6} more)" if len(waves) > 6 else ""
    return f"{len(waves)} wave(s): " + ", ".join(parts) + more
