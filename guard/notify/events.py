"""core/v1 Events on the DaemonSet: one per guard action, one per alert that could not be delivered.

They are what `kubectl describe daemonset` shows, so they are always sent, whatever other sinks
a policy configures. Created through core/v1 with both the old fields (source, firstTimestamp,
lastTimestamp, count) that kubectl prints and the new ones. Once eventTime is set the apiserver
(pkg/apis/core/validation/events.go, legacyValidateEvent) requires reportingComponent (a
qualified name), reportingInstance (<= 128 chars), action (<= 128), reason (<= 128), a message
of at most 1024 bytes, and the Event's namespace equal to the involved object's.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from guard.notify.alert import Alert, AlertKind, rfc3339
from guard.notify.sinks import SinkError

COMPONENT = "dsguard-guard"
REPORTING_COMPONENT = "dsguard.io/guard"
DELIVERY_FAILED = "AlertDeliveryFailed"
MAX_MESSAGE_BYTES = 1024
MAX_FIELD = 128  # reason, action, reportingInstance

REASONS = {
    AlertKind.PAUSED: "RolloutPaused",
    AlertKind.ROLLED_BACK: "RolloutRolledBack",
    AlertKind.RESUMED: "RolloutResumed",
    AlertKind.STALLED: "RolloutStalled",
    AlertKind.GATE_ERROR: "WaveGateError",
    AlertKind.COMPLETED: "WaveRolloutCompleted",
}
ACTIONS = {
    AlertKind.PAUSED: "Pause",
    AlertKind.ROLLED_BACK: "Rollback",
    AlertKind.RESUMED: "Resume",
    AlertKind.STALLED: "Alert",  # nothing done to the DaemonSet: people are told
    AlertKind.GATE_ERROR: "Alert",
    AlertKind.COMPLETED: "Rollout",
}


class EventsAPI(Protocol):
    """The one call used from CoreV1Api; tests pass a fake. The body is a plain dict, not a
    CoreV1Event: the model would serialise eventTime with isoformat(), which drops the six
    fractional digits MicroTime must have whenever the microseconds are 0."""

    def create_namespaced_event(self, namespace: str, body: Any) -> Awaitable[object]: ...


def clip_bytes(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """At most `limit` UTF-8 bytes (the apiserver counts bytes), cut on a character boundary."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def action_message(alert: Alert) -> str:
    parts = [alert.summary, f"revision {alert.revision}"]
    if alert.policy:
        parts.append(f"policy {alert.policy}")
    if alert.failing:
        pods = ", ".join(f"{p.pod} on {p.node} ({p.reason})" for p in alert.failing)
        parts.append(f"failing: {pods}")
    return clip_bytes("; ".join(parts))


def _instance() -> str:
    return (os.environ.get("POD_NAME") or socket.gethostname() or "dsguard-guard")[:MAX_FIELD]


class EventRecorder:
    """Records Events on DaemonSets. Also a Sink (named "events") for the always-on action Event."""

    def __init__(
        self,
        api: EventsAPI,
        *,
        instance: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        name: str = "events",
    ) -> None:
        self.name = name
        self._api = api
        self._instance = (instance or _instance())[:MAX_FIELD]
        self._now = now

    @classmethod
    def for_client(cls, api_client: client.ApiClient, **kwargs: Any) -> EventRecorder:
        return cls(client.CoreV1Api(api_client), **kwargs)

    def __repr__(self) -> str:
        return f"EventRecorder(name={self.name!r}, instance={self._instance!r})"

    async def send(self, alert: Alert) -> None:
        await self.record(
            namespace=alert.namespace,
            name=alert.daemonset,
            uid=alert.uid,
            reason=REASONS[alert.kind],
            action=ACTIONS[alert.kind],
            message=action_message(alert),
            warning=alert.kind not in (AlertKind.RESUMED, AlertKind.COMPLETED),
            at=alert.at,  # when the guard acted, not when a retry got through
        )

    async def delivery_failed(self, alert: Alert, sink: str, error: str) -> None:
        """The Event that keeps an undeliverable alert from being silently lost. `error` has no secrets."""
        await self.record(
            namespace=alert.namespace,
            name=alert.daemonset,
            uid=alert.uid,
            reason=DELIVERY_FAILED,
            action="DeliverAlert",
            message=clip_bytes(
                f"alert sink {sink} could not deliver the {alert.kind.words} alert "
                f"(revision {alert.revision}): {error}. The alert was: {alert.summary}"
            ),
            warning=True,
        )

    async def record(
        self,
        *,
        namespace: str,
        name: str,
        uid: str,
        reason: str,
        action: str,
        message: str,
        warning: bool,
        at: datetime | None = None,
    ) -> None:
        """Create one Event; SinkError on failure (permanent for 4xx other than 408/409/429)."""
        body = self.event_body(
            namespace=namespace,
            name=name,
            uid=uid,
            reason=reason,
            action=action,
            message=message,
            warning=warning,
            at=at,
        )
        where = f"Event {reason} on DaemonSet {namespace}/{name}"
        try:
            await self._api.create_namespaced_event(namespace, body)
        except ApiException as e:
            status = e.status or 0
            # 409: the random name collided; a new attempt gets a new name.
            permanent = 400 <= status < 500 and status not in (408, 409, 429)
            raise SinkError(f"{where}: HTTP {status} {_status_message(e)}", permanent=permanent) from None
        except TimeoutError:
            raise SinkError(f"{where}: the API server did not answer in time") from None
        except aiohttp.ClientError as e:
            raise SinkError(f"{where}: {type(e).__name__}: {e}") from None

    def event_body(
        self,
        *,
        namespace: str,
        name: str,
        uid: str,
        reason: str,
        action: str,
        message: str,
        warning: bool,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        when = (at or self._now()).astimezone(UTC)
        seconds = when.strftime("%Y-%m-%dT%H:%M:%SZ")  # metav1.Time: RFC 3339, seconds
        return {
            "apiVersion": "v1",
            "kind": "Event",
            # kubectl's recorder names Events "<object>.<unique hex>"; 253 is the name limit.
            "metadata": {"name": f"{name[:236]}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "namespace": namespace,
                "name": name,
                "uid": uid,
            },
            "reason": reason[:MAX_FIELD],
            "action": action[:MAX_FIELD],
            "message": clip_bytes(message),
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self._instance,
            "eventTime": rfc3339(when),  # metav1.MicroTime: exactly six fractional digits
            "firstTimestamp": seconds,
            "lastTimestamp": seconds,
            "count": 1,
        }


def _status_message(e: ApiException) -> str:
    """The apiserver's Status.message (why it refused), else the HTTP reason."""
    try:
        status = orjson.loads(e.body) if e.body else None
    except orjson.JSONDecodeError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])
    return str(e.reason or "")
