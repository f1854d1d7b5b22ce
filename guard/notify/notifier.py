"""Routes each alert to the sinks of the policy that asked for it: one AlertDispatcher per distinct
`alerts` list of the policies' guard sections, each with the always-on Event sink first."""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
from prometheus_client import CollectorRegistry

from dsguard.policy import AlertSink, GuardPolicy
from guard.notify.alert import Alert
from guard.notify.dispatch import AlertDispatcher, delivery_counter
from guard.notify.events import EventRecorder
from guard.notify.sinks import SecretReader, Sink, build_sinks


class PendingAlerts(Protocol):
    """Where the alerts the guard must deliver at least once are kept (guard.outbox.Outbox)."""

    def alert_settled(self, alert: Alert) -> None: ...

    def will_resend(self, alert: Alert) -> bool: ...


class Notifier:
    """`notifier(alert, guard)` sends `alert` to the Event sink and to `guard.alerts`.

    Every dispatcher reports to `pending`: an alert settled by every sink (AlertDispatcher's
    on_settled), and whether an alert left undelivered at shutdown will be sent again (will_resend).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        secrets: SecretReader,
        recorder: EventRecorder,
        registry: CollectorRegistry,
        pending: PendingAlerts,
        give_up_after: float = 1800.0,
    ) -> None:
        self.session = session
        self.secrets = secrets
        self.recorder = recorder
        self.counter = delivery_counter(registry)
        self.give_up_after = give_up_after
        self.pending = pending
        self._dispatchers: dict[tuple[AlertSink, ...], AlertDispatcher] = {}

    def _dispatcher(self, guard: GuardPolicy) -> AlertDispatcher:
        key = guard.alerts
        found = self._dispatchers.get(key)
        if found is None:
            sinks: list[Sink] = [self.recorder, *build_sinks(guard.alerts, self.session, self.secrets)]
            found = AlertDispatcher(
                sinks,
                recorder=self.recorder,
                metrics=self.counter,
                give_up_after=self.give_up_after,
                on_settled=self.pending.alert_settled,
                will_resend=self.pending.will_resend,
            )
            self._dispatchers[key] = found
        return found

    def __call__(self, alert: Alert, guard: GuardPolicy) -> None:
        dispatcher = self._dispatcher(guard)
        asyncio.get_running_loop().create_task(dispatcher.start())
        dispatcher.submit(alert)

    async def close(self, drain_timeout: float) -> None:
        for d in self._dispatchers.values():
            await d.close(drain_timeout)
