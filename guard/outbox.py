"""The guard's outbox: the dsguard.io/alerts-pending annotation on each DaemonSet.

Alerts are at least once: an action's patch also appends its alert to the DaemonSet's pending
alerts (guard.actions.with_pending_alert; the guard then calls `sent`). Once every sink has
settled the alert (`alert_settled`, the AlertDispatcher's on_settled), the leader removes it with
a JSON patch that tests the exact value first (`sync`). A leader that finds an entry it did not
send itself (its predecessor crashed, stopped or lost the lease first) sends it again. Entries
that are not alerts about this DaemonSet, and a value that is not a JSON list at all, are logged
once and removed. `dsguard_guard_alerts_pending` counts the entries as last seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import ALERTS_PENDING
from guard import actions
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert, rfc3339
from guard.rollout import DaemonSetState
from guard.store import Tracked

log = logging.getLogger("dsguard.guard")

# A settled alert not yet seen in its DaemonSet's pending alerts (the watch has not brought our
# own patch) is waited for this long; an alert this process sent is remembered this long after
# it left the annotation (a late watch event must not make it look like someone else's).
OUTBOX_MEMORY = 600.0

AlertId = tuple[str, str]  # (key, at): see actions.entry_id
Resend = Callable[[DaemonSetState, Alert], None]  # sends a pending alert again (to its policy's sinks)


def alert_id(alert: Alert) -> AlertId:
    return alert.key, rfc3339(alert.at)


class Outbox:
    def __init__(
        self,
        *,
        patcher: actions.DaemonSetPatcher,
        mark: Callable[[str], None],
        metrics: GuardMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`mark(uid)`: an alert of that DaemonSet settled, so the guard should come back to it
        (`sync`) to take the alert off (guard.store.Dirty.mark)."""
        self.patcher = patcher
        self._mark = mark
        self.metrics = metrics or GuardMetrics()
        self.monotonic = monotonic
        # uid -> the pending alerts this process sent (or resent) -> when last seen pending
        self._submitted: dict[str, dict[AlertId, float]] = {}
        # uid -> settled alerts to take off the annotation -> since when
        self._to_clear: dict[str, dict[AlertId, float]] = {}
        # uid -> the annotation value a clear was sent against (or refused on): not again on it
        self._cleared_against: dict[str, str] = {}
        self._malformed_seen: dict[str, set[str]] = {}  # uid -> malformed entries already logged
        self._pending: dict[str, int] = {}  # uid -> entries in its pending alerts, as last seen

    # -- the dispatchers' side -------------------------------------------------------------
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

    # -- the guard's side -------------------------------------------------------------------
    def sent(self, alert: Alert) -> None:
        """The guard patched `alert` into its DaemonSet's pending alerts, and sends it now."""
        self._submitted.setdefault(alert.uid, {})[alert_id(alert)] = self.monotonic()

    def count(self, uid: str, ds: DaemonSetState | None) -> None:
        """Count the DaemonSet's pending alerts (a follower only counts)."""
        raw = ds.annotations.get(ALERTS_PENDING) if ds is not None else None
        entries = actions.pending_entries(raw)
        count = 1 if entries is None else len(entries)
        if count:
            self._pending[uid] = count
        else:
            self._pending.pop(uid, None)

    async def sync(
        self, uid: str, ds: DaemonSetState | None, *, patched: bool, resend: Resend | None
    ) -> None:
        """The leader's part: resend (with `resend`, once every watch has listed; None before) the
        pending alerts this process has not sent, and remove the settled and the malformed ones
        (not in the round it patched the DaemonSet for an action: that patch changed the value,
        so a clear made from the version it saw would be refused)."""
        self.count(uid, ds)
        if ds is None:
            return
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
        if resend is not None:
            for _, alert in alerts:
                self._resend(ds, alert, resend)
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

    def tidy(self, daemonsets: Mapping[str, Tracked]) -> None:
        """After a round of `sync`/`count`: forget what is about DaemonSets no longer tracked and
        settled alerts long unseen in their annotation, and update the pending gauge."""
        now = self.monotonic()
        for uid in list(self._to_clear):
            entries = self._to_clear[uid]
            pending = _pending_ids(daemonsets.get(uid))
            for ident in [i for i, since in entries.items() if now - since > OUTBOX_MEMORY]:
                if ident not in pending:  # never seen in the annotation (someone removed it?)
                    del entries[ident]
            if uid not in daemonsets or not entries:
                del self._to_clear[uid]
        for other in (self._submitted, self._cleared_against, self._malformed_seen, self._pending):
            for uid in [uid for uid in other if uid not in daemonsets]:
                del other[uid]
        self.metrics.alerts_pending.set(sum(self._pending.values()))

    # -- internals -----------------------------------------------------------------------------
    def _resend(self, ds: DaemonSetState, alert: Alert, resend: Resend) -> None:
        ident = alert_id(alert)
        submitted = self._submitted.setdefault(ds.uid, {})
        if ident in submitted:
            submitted[ident] = self.monotonic()  # still pending: forgotten only once it is gone
            return
        submitted[ident] = self.monotonic()
        self.metrics.alerts_resent.inc()
        log.warning(
            "%s: sending the pending %s alert of %s (key %s) again: the guard that acted did not settle it",
            ds.ref,
            alert.kind.value,
            rfc3339(alert.at),
            alert.key,
        )
        resend(ds, alert)

    def _malformed(self, ds: DaemonSetState, text: str, why: str) -> None:
        seen = self._malformed_seen.setdefault(ds.uid, set())
        if text not in seen:
            seen.add(text)
            log.error(
                "%s: dropping a malformed entry of %s (%s): %s", ds.ref, ALERTS_PENDING, why, text[:500]
            )


def _pending_ids(tracked: Tracked | None) -> set[AlertId]:
    """The alerts pending in the DaemonSet's annotation now (still to clear when settled, however
    long this replica was not the leader)."""
    entries = actions.pending_entries(tracked.state.annotations.get(ALERTS_PENDING) if tracked else None)
    ids: set[AlertId] = set()
    for entry in entries or ():
        with contextlib.suppress(ValueError):
            ids.add(alert_id(Alert.from_json(entry)))
    return ids
