"""Delivers alerts to every sink: deduplicated, retried with backoff, never silently lost.

Each sink has its own queue and worker task, so a sink that is down (and backing off for
minutes) delays no other sink; within a sink alerts go out in the order submitted (a RESUMED
never overtakes its PAUSED). An alert that finally can't be delivered (a permanent error, retries
past `give_up_after`, or still queued at shutdown) becomes an AlertDeliveryFailed Event on its
DaemonSet and an ERROR log line; if even that Event can't be created, the log line remains.

`on_settled(alert)` is called once every sink is done with the alert's key: delivered, or failed
for good (and recorded as above). The guard then removes the alert from the DaemonSet's pending
alerts. It is not called for an alert still queued at shutdown: that one stays pending, and the
next guard sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from dsguard.log_context import ObjectRef, about, object_extra
from guard.notify.alert import Alert, AlertKind
from guard.notify.sinks import Sink, SinkError

log = logging.getLogger("dsguard.guard.notify")

REMEMBER = 10_000  # delivered keys remembered per sink, for dedupe
RECORD_TIMEOUT = 10.0  # for an AlertDeliveryFailed Event at shutdown


class FailureRecorder(Protocol):
    """What records an undeliverable alert (EventRecorder does, as an AlertDeliveryFailed Event)."""

    async def delivery_failed(self, alert: Alert, sink: str, error: str) -> None: ...


def delivery_counter(registry: CollectorRegistry) -> Counter:
    """The counter AlertDispatcher expects as `metrics`."""
    return Counter(
        "dsguard_alert_deliveries_total",
        "Alert delivery outcomes by sink: delivered, retry, failed (recorded as an "
        "AlertDeliveryFailed Event), deduplicated (a repeated submit ignored).",
        ["sink", "result"],
        registry=registry,
    )


@dataclass(eq=False)
class _Lane:
    sink: Sink
    queue: asyncio.Queue[Alert] = field(default_factory=asyncio.Queue)
    keys: set[str] = field(default_factory=set)  # queued or in flight
    done: OrderedDict[str, None] = field(default_factory=OrderedDict)  # delivered or failed, oldest first
    current: Alert | None = None
    last_error: str = ""
    task: asyncio.Task[None] | None = None


class AlertDispatcher:
    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        recorder: FailureRecorder,
        metrics: Counter | None = None,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        give_up_after: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        remember: int = REMEMBER,
        rng: random.Random | None = None,
        on_settled: Callable[[Alert], None] | None = None,
        will_resend: Callable[[Alert], bool] | None = None,
    ) -> None:
        """`will_resend(alert)`: whether an alert left undelivered at shutdown is still pending on its
        DaemonSet, for the next guard to send (it only changes the AlertDeliveryFailed message)."""
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique (dedupe and metrics use them): {names}")
        self._lanes = [_Lane(s) for s in sinks]
        self._recorder = recorder
        self._metrics = metrics
        self._base = base_delay
        self._max = max_delay
        self._give_up_after = give_up_after
        self._clock = clock
        self._sleep = sleep
        self._remember = remember
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._on_settled = on_settled
        self._will_resend = will_resend
        # key -> (the alerts submitted under it, the lanes that still hold it): for on_settled
        self._unsettled: dict[str, tuple[list[Alert], set[_Lane]]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._closed = False

    # -- API -------------------------------------------------------------------------------------
    def submit(self, alert: Alert) -> bool:
        """Queue `alert` for every sink that has not already got it (queued, in flight or done).

        Returns whether any sink queued it. Never blocks; raises RuntimeError once closed, so a
        late alert fails loudly rather than vanishing.
        """
        if self._closed:
            raise RuntimeError(f"alert {alert.key} submitted after the dispatcher was closed")
        if alert.kind is AlertKind.RESUMED:
            self._rearm(alert)
        queued: list[_Lane] = []
        for lane in self._lanes:
            if alert.key in lane.keys or alert.key in lane.done:
                self._count(lane, "deduplicated")
                continue
            lane.keys.add(alert.key)
            lane.queue.put_nowait(alert)
            queued.append(lane)
        if queued:
            self._idle.clear()
        if self._on_settled is not None:
            unsettled = self._unsettled.get(alert.key)
            if unsettled is not None:  # some sink still holds the key: settled together with it
                if alert not in unsettled[0]:
                    unsettled[0].append(alert)
                unsettled[1].update(queued)
            elif queued:
                self._unsettled[alert.key] = ([alert], set(queued))
            else:  # every sink is already done with this key
                self._settled(alert)
        return bool(queued)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._work(lane), name=f"alerts:{lane.sink.name}")

    async def close(self, drain_timeout: float) -> None:
        """Stop taking alerts, deliver what is queued for up to `drain_timeout` seconds, and record
        AlertDeliveryFailed for whatever is left."""
        if self._closed:
            return
        self._closed = True
        await self.start()  # a dispatcher closed before it started still drains
        with contextlib.suppress(TimeoutError):
            await self.wait_idle(drain_timeout)
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left: list[tuple[_Lane, Alert]] = []
        for lane in self._lanes:
            if lane.current is not None:
                left.append((lane, lane.current))
            while not lane.queue.empty():
                left.append((lane, lane.queue.get_nowait()))
        await asyncio.gather(
            *(
                self._failed(lane, alert, self._shutdown_error(lane, alert), record_timeout=RECORD_TIMEOUT)
                for lane, alert in left
            )
        )
        for lane in self._lanes:
            lane.keys.clear()
            lane.current = None
        self._unsettled.clear()  # not settled: still pending on their DaemonSets, for the next guard
        self._idle.set()

    def pending(self) -> int:
        """Deliveries (alert x sink) queued or in flight."""
        return sum(len(lane.keys) for lane in self._lanes)

    async def wait_idle(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline, not a cancel scope
        """Until nothing is pending (failures already recorded); TimeoutError after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.pending()} alert deliveries still pending after {timeout:g}s"
            ) from None

    # -- workers ---------------------------------------------------------------------------------
    async def _work(self, lane: _Lane) -> None:
        # The task was started while the guard decided for some DaemonSet, and copied that log
        # context: each alert's lines are about its own DaemonSet instead.
        with about(None):
            await self._work_lane(lane)

    async def _work_lane(self, lane: _Lane) -> None:
        while True:
            alert = await lane.queue.get()
            lane.current, lane.last_error = alert, ""
            try:
                with about(ObjectRef("DaemonSet", alert.daemonset, alert.namespace)):
                    await self._deliver(
                        lane, alert
                    )  # on cancellation `current` stays set: close() reports it
            except Exception:
                # A bug of ours (say a mislabelled metrics Counter) must not stop this sink's queue.
                log.exception(
                    "alert %s to %s: delivery aborted",
                    alert.key,
                    lane.sink.name,
                    extra=object_extra(ObjectRef("DaemonSet", alert.daemonset, alert.namespace)),
                )
            lane.current = None
            lane.keys.discard(alert.key)
            self._remember_done(lane, alert.key)
            self._lane_done(lane, alert.key)
            if self.pending() == 0:
                self._idle.set()

    async def _deliver(self, lane: _Lane, alert: Alert) -> None:
        sink = lane.sink
        deadline = self._clock() + self._give_up_after
        attempt = 0
        while True:
            attempt += 1
            try:
                await sink.send(alert)
            except SinkError as e:
                lane.last_error = str(e)
                if e.permanent:
                    await self._failed(lane, alert, lane.last_error)
                    return
            except Exception as e:
                # A bug in a sink: retrying won't fix it, and it must not kill the worker. The
                # traceback is for us; the Event gets the type only (the text could be anything).
                log.error("alert sink %s raised on %s", sink.name, alert.key, exc_info=True)
                await self._failed(lane, alert, f"unexpected {type(e).__name__} in the sink")
                return
            else:
                self._count(lane, "delivered")
                log.info("alert %s delivered to %s (attempt %d)", alert.key, sink.name, attempt)
                return
            remaining = deadline - self._clock()
            if remaining <= 0:
                await self._failed(
                    lane,
                    alert,
                    f"gave up after {attempt} attempts in {self._give_up_after:g}s; "
                    f"last error: {lane.last_error}",
                )
                return
            delay = min(self._backoff(attempt), remaining)  # a last attempt right at the deadline
            self._count(lane, "retry")
            log.warning(
                "alert %s to %s failed (attempt %d), retrying in %.2fs: %s",
                alert.key,
                sink.name,
                attempt,
                delay,
                lane.last_error,
            )
            await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Exponential, capped; "equal jitter" keeps at least half the delay so a sink that is
        # down is not hammered, yet guards restarted together don't retry in lockstep.
        delay: float = min(self._max, self._base * 2.0 ** min(attempt - 1, 60))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _failed(
        self, lane: _Lane, alert: Alert, error: str, *, record_timeout: float | None = None
    ) -> None:
        self._count(lane, "failed")
        log.error(
            "alert %s (%s %s/%s) NOT delivered to %s: %s",
            alert.key,
            alert.kind.value,
            alert.namespace,
            alert.daemonset,
            lane.sink.name,
            error,
        )
        try:
            async with asyncio.timeout(record_timeout):
                await self._recorder.delivery_failed(alert, lane.sink.name, error)
        except Exception as e:
            log.error(
                "could not record AlertDeliveryFailed for %s to %s either: %s", alert.key, lane.sink.name, e
            )

    # -- settling --------------------------------------------------------------------------------
    def _lane_done(self, lane: _Lane, key: str) -> None:
        unsettled = self._unsettled.get(key)
        if unsettled is None:
            return
        unsettled[1].discard(lane)
        if not unsettled[1]:
            del self._unsettled[key]
            for alert in unsettled[0]:
                self._settled(alert)

    def _settled(self, alert: Alert) -> None:
        if self._on_settled is None:
            return
        try:
            self._on_settled(alert)
        except Exception:
            log.exception("alert %s: on_settled failed", alert.key)  # a bug of ours; the lane lives on

    def _shutdown_error(self, lane: _Lane, alert: Alert) -> str:
        last = lane.last_error if alert is lane.current and lane.last_error else ""
        try:
            resend = self._will_resend is not None and self._will_resend(alert)
        except Exception:
            log.exception("alert %s: will_resend failed", alert.key)
            resend = False
        return (
            "not delivered before shutdown"
            + ("; the next guard will send it again (it is still pending on the DaemonSet)" if resend else "")
            + (f"; last error: {last}" if last else "")
        )

    # -- dedupe ----------------------------------------------------------------------------------
    def _remember_done(self, lane: _Lane, key: str) -> None:
        lane.done[key] = None
        lane.done.move_to_end(key)
        while len(lane.done) > self._remember:
            lane.done.popitem(last=False)

    def _rearm(self, resumed: Alert) -> None:
        # After a resume the guard may pause (or see a stall) again on the same revision: that
        # must alert again, not be taken for a repeat of the first one.
        for kind in (AlertKind.PAUSED, AlertKind.STALLED):
            key = f"{resumed.uid}/{resumed.revision}/{kind.value}"
            for lane in self._lanes:
                lane.done.pop(key, None)

    def _count(self, lane: _Lane, result: str) -> None:
        if self._metrics is not None:
            self._metrics.labels(sink=lane.sink.name, result=result).inc()
