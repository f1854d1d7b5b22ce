"""Alert delivery against real local HTTP receivers standing in for Slack, a webhook and Alertmanager.

Receivers are aiohttp servers on 127.0.0.1 answering scripted statuses; Kubernetes is a small
fake apiserver for the client-level tests and a fake EventsAPI elsewhere. Retry delays are tiny
(or on a fake clock) and every wait is `wait_idle` with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_asyncio import client
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from dsguard.policy import AlertSink, AlertType, GuardPolicy, SecretRef, parse_policy
from guard.notify.alert import Alert, AlertKind, FailingPod
from guard.notify.dispatch import AlertDispatcher, delivery_counter
from guard.notify.events import DELIVERY_FAILED, EventRecorder
from guard.notify.notifier import Notifier
from guard.notify.sinks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    AlertmanagerSink,
    KubeSecretReader,
    SecretError,
    SecretValue,
    SinkError,
    SlackSink,
    WebhookSink,
    build_sinks,
    sign,
    slack_message,
    verify_signature,
)

AT = datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
UID = "0b6f1a9e-5c1d-4d8e-9a57-3f2c1b0a9e11"
SLACK_TOKEN = "T0SECRET/B0SECRET/xoxSECRETtoken42"  # the credential part of a Slack webhook URL
HMAC_KEY = b"hmac-key-that-must-never-leak"
WAIT = 3.0  # deadline for wait_idle; runs finish in milliseconds


def make_alert(kind: AlertKind = AlertKind.PAUSED, *, failing: int = 2, at: datetime = AT) -> Alert:
    pods = tuple(FailingPod(f"node-agent-{i:05d}", f"worker-{i}", "CrashLoopBackOff") for i in range(failing))
    return Alert(
        kind=kind,
        namespace="kube-system",
        daemonset="node-agent",
        uid=UID,
        revision="5d9c7b8f6",
        summary=f"{kind.words}: {failing} of 5 updated pods failing (CrashLoopBackOff) with threshold 2",
        failing=pods,
        policy="node-agents",
        at=at,
    )


# --- local receivers and fakes ------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """An HTTP server answering `statuses` in order (then 200), recording every request."""

    def __init__(self, statuses: Sequence[int] = (), text: str = "ok") -> None:
        self.statuses = list(statuses)
        self.text = text
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)  # the server's log, not ours: it has paths
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.seen) < n:
                self._arrived.clear()
                await self._arrived.wait()

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.path_qs, request.headers.copy(), await request.read()))
        self._arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text=self.text if status >= 300 else "ok")


MakeReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[MakeReceiver]:
    started: list[Receiver] = []

    async def make(statuses: Sequence[int] = (), text: str = "ok") -> Receiver:
        r = await Receiver(statuses, text).start()
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class FakeSecrets:
    """A SecretReader over a dict; errors worded like KubeSecretReader's."""

    def __init__(self, data: dict[tuple[str, str, str], bytes]) -> None:
        self.data = data
        self.reads = 0

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        self.reads += 1
        if (namespace, name, key) not in self.data:
            raise SecretError(f"Secret {namespace}/{name} has no key {key!r}")
        return self.data[(namespace, name, key)]


class FakeEventsAPI:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def create_namespaced_event(self, namespace: str, body: Any) -> object:
        assert namespace == body["metadata"]["namespace"]
        self.created.append(body)
        return body


@dataclass
class Failures:
    """A FailureRecorder that keeps what it was told."""

    recorded: list[tuple[str, str, str]] = field(default_factory=list)  # (alert key, sink, error)

    async def delivery_failed(self, alert: Alert, sink: str, error: str) -> None:
        self.recorded.append((alert.key, sink, error))


def parsed_alerts(*specs: dict[str, Any]) -> tuple[AlertSink, ...]:
    """`spec.guard.alerts` as the guard gets them: through the policy parser, their one authority."""
    policy = parse_policy({"metadata": {"name": "agents"}, "spec": {"guard": {"alerts": list(specs)}}})
    assert policy.guard is not None
    return policy.guard.alerts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric(registry: CollectorRegistry, sink: str, result: str) -> float:
    value = registry.get_sample_value("dsguard_alert_deliveries_total", {"sink": sink, "result": result})
    return value or 0.0


def dispatcher(
    sinks: Sequence[Any], recorder: Any, registry: CollectorRegistry, **kw: Any
) -> AlertDispatcher:
    kw.setdefault("base_delay", 0.01)
    kw.setdefault("max_delay", 0.02)
    return AlertDispatcher(
        sinks,
        recorder=recorder,
        metrics=delivery_counter(registry),
        rng=random.Random(7),  # noqa: S311 - seeded jitter
        **kw,
    )


# --- the alert and its JSON ---------------------------------------------------------------------


def test_alert_json_schema_v1() -> None:
    alert = make_alert(failing=1, at=datetime(2025, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert alert.at == datetime(2025, 5, 1, 12, 0, tzinfo=UTC) and alert.at.tzinfo is UTC
    assert alert.key == f"{UID}/5d9c7b8f6/paused"
    assert alert.to_json() == {
        "version": 1,
        "kind": "paused",
        "severity": "critical",
        "key": f"{UID}/5d9c7b8f6/paused",
        "at": "2025-05-01T12:00:00.000000Z",
        "daemonset": {"namespace": "kube-system", "name": "node-agent", "uid": UID},
        "revision": "5d9c7b8f6",
        "policy": "node-agents",
        "summary": "paused: 1 of 5 updated pods failing (CrashLoopBackOff) with threshold 2",
        "failing": [{"pod": "node-agent-00000", "node": "worker-0", "reason": "CrashLoopBackOff"}],
    }
    assert [k.camel for k in AlertKind] == [
        "Paused",
        "RolledBack",
        "Resumed",
        "Stalled",
        "GateError",
        "Completed",
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        Alert(AlertKind.PAUSED, "ns", "ds", UID, "r", "s", at=datetime(2025, 5, 1))


# --- payloads on the wire -----------------------------------------------------------------------


async def test_webhook_body_headers_and_signature(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    r = await receiver()
    secrets = FakeSecrets({("dsguard", "alert-hmac", "key"): HMAC_KEY})
    [sink] = build_sinks(
        parsed_alerts(
            {
                "type": "Webhook",
                "url": f"{r.url}/dsguard",
                "hmacSecretRef": {"namespace": "dsguard", "name": "alert-hmac", "key": "key"},
            }
        ),
        session,
        secrets,
    )
    assert sink.name == "webhook-0" and secrets.reads == 0  # read at send time, not at build time
    alert = make_alert()
    await sink.send(alert)

    [seen] = r.seen
    assert seen.path == "/dsguard"
    assert seen.body == orjson.dumps(alert.to_json())  # exactly the bytes that were signed
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers[EVENT_HEADER] == "paused"
    assert len(seen.headers[DELIVERY_HEADER]) == 36
    signature = seen.headers[SIGNATURE_HEADER]
    assert signature.startswith("sha256=") and signature == sign(seen.body, HMAC_KEY)
    assert verify_signature(seen.body, signature, HMAC_KEY)
    tampered = seen.body.replace(b'"paused"', b'"resumed"', 1)
    assert tampered != seen.body and not verify_signature(tampered, signature, HMAC_KEY)
    assert not verify_signature(seen.body, signature, b"another key")
    assert not verify_signature(seen.body, "sha256=" + "0" * 64, HMAC_KEY)
    assert not verify_signature(seen.body, "sha256=ünïcode", HMAC_KEY)

    # Without hmacSecretRef: no signature header, same body.
    await WebhookSink(r.url, session).send(alert)
    assert SIGNATURE_HEADER not in r.seen[1].headers and r.seen[1].body == seen.body


async def test_slack_message(receiver: MakeReceiver, session: aiohttp.ClientSession) -> None:
    r = await receiver()
    secrets = FakeSecrets({("dsguard", "alert-slack", "url"): f"{r.url}/services/{SLACK_TOKEN}\n".encode()})
    [sink] = build_sinks(
        parsed_alerts(
            {"type": "Slack", "urlSecretRef": {"namespace": "dsguard", "name": "alert-slack", "key": "url"}}
        ),
        session,
        secrets,
    )
    alert = make_alert(AlertKind.ROLLED_BACK, failing=12)
    await sink.send(alert)
    [seen] = r.seen
    assert seen.path == f"/services/{SLACK_TOKEN}"  # the Secret's trailing newline is not sent
    tricky = slack_message(replace(alert, summary="<!channel> & <http://x|click>", failing=()))
    assert tricky["text"].endswith(": &lt;!channel&gt; &amp; &lt;http://x|click&gt;")
    pods = "\n".join(f"• `node-agent-{i:05d}` on `worker-{i}`: CrashLoopBackOff" for i in range(10))
    assert seen.json() == {
        "text": "DaemonSet rollout rolled back: kube-system/node-agent: " + alert.summary,
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": ":rewind: DaemonSet rollout rolled back"},
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*DaemonSet*\n`kube-system/node-agent`"},
                    {"type": "mrkdwn", "text": "*Action*\nrolled back"},
                    {"type": "mrkdwn", "text": "*Revision*\n`5d9c7b8f6`"},
                    {"type": "mrkdwn", "text": "*Policy*\n`node-agents`"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.summary}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Failing pods* (10 of 12)\n" + pods}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "dsguard · 2025-05-01T12:00:00.123456Z"}],
            },
        ],
    }


async def test_alertmanager_fires_and_resume_resolves(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    r = await receiver()
    now = AT + timedelta(minutes=7)
    sink = AlertmanagerSink(r.url + "/", session, generator_url="https://dsguard.example/ds", now=lambda: now)
    paused = make_alert(failing=1)
    await sink.send(paused)
    await sink.send(make_alert(AlertKind.RESUMED, failing=0, at=AT + timedelta(minutes=5)))
    await sink.send(make_alert(AlertKind.STALLED, failing=0))

    assert [s.path for s in r.seen] == ["/api/v2/alerts"] * 3
    labels = {
        "alertname": "DaemonSetRolloutPaused",
        "namespace": "kube-system",
        "daemonset": "node-agent",
        "revision": "5d9c7b8f6",
        "severity": "critical",
    }
    description = (
        f"DaemonSet kube-system/node-agent, revision 5d9c7b8f6: {paused.summary}\n"
        "Policy: node-agents\nFailing pods:\n- node-agent-00000 on worker-0: CrashLoopBackOff"
    )
    assert r.seen[0].json() == [
        {
            "labels": labels,
            "annotations": {"summary": paused.summary, "description": description},
            "startsAt": "2025-05-01T12:00:00.123456Z",
            "endsAt": "2025-05-02T12:00:00.123456Z",  # held until RESUMED resolves it
            "generatorURL": "https://dsguard.example/ds",
        }
    ]
    [resolve] = r.seen[1].json()
    assert resolve["labels"] == labels  # same labels: the same Alertmanager alert, now resolved
    assert resolve["endsAt"] == "2025-05-01T12:07:00.123456Z" and "startsAt" not in resolve
    [stalled] = r.seen[2].json()
    assert stalled["labels"] == labels | {"alertname": "DaemonSetRolloutStalled", "severity": "warning"}
    assert "endsAt" not in stalled  # Alertmanager's resolve_timeout ends it


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (400, True),
        (401, True),
        (404, True),
        (410, True),
        (301, True),
        (408, False),
        (429, False),
        (500, False),
    ],
)
async def test_status_classes(
    receiver: MakeReceiver, session: aiohttp.ClientSession, status: int, permanent: bool
) -> None:
    r = await receiver([status], text="nope")
    with pytest.raises(SinkError, match=f"HTTP {status}: nope") as err:
        await WebhookSink(r.url, session).send(make_alert())
    assert err.value.permanent is permanent


async def test_timeout_and_refused_are_transient(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(SinkError, match=r"cannot connect to 127\.0\.0\.1") as err:
        await WebhookSink(f"http://127.0.0.1:{free_port()}/x", session).send(make_alert())
    assert not err.value.permanent

    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{runner.addresses[0][1]}/", session, timeout=0.05)
        with pytest.raises(SinkError, match=r"no answer within 0\.05s") as err:
            await sink.send(make_alert())
        assert not err.value.permanent
    finally:
        release.set()
        await runner.cleanup()


# --- the dispatcher -----------------------------------------------------------------------------


async def test_receiver_down_then_up_delivers_once(session: aiohttp.ClientSession) -> None:
    port = free_port()
    r = Receiver()
    registry = CollectorRegistry()

    async def sleep(delay: float) -> None:
        # The first retry's backoff is where the receiver comes up: the first attempt was refused.
        if not r.port:
            await r.start(port)
        await asyncio.sleep(0)

    failures = Failures()
    d = dispatcher([WebhookSink(f"http://127.0.0.1:{port}/hook", session)], failures, registry, sleep=sleep)
    await d.start()
    try:
        alert = make_alert()
        assert d.submit(alert)
        await d.wait_idle(WAIT)
        assert len(r.seen) == 1 and r.seen[0].json()["key"] == alert.key
        assert metric(registry, "webhook", "retry") == 1 and metric(registry, "webhook", "delivered") == 1
        assert not failures.recorded and d.pending() == 0
    finally:
        await d.close(1)
        await r.stop()


async def test_500_twice_then_200_delivers_once_with_stable_delivery_id(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    r = await receiver([500, 503])
    registry = CollectorRegistry()
    d = dispatcher([WebhookSink(r.url, session, hmac_key=HMAC_KEY)], Failures(), registry)
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    await d.close(1)
    assert len(r.seen) == 3
    assert len({s.headers[DELIVERY_HEADER] for s in r.seen}) == 1
    assert len({s.body for s in r.seen}) == 1
    assert all(verify_signature(s.body, s.headers[SIGNATURE_HEADER], HMAC_KEY) for s in r.seen)
    assert (metric(registry, "webhook", "retry"), metric(registry, "webhook", "delivered")) == (2, 1)


async def test_400_is_final_and_becomes_an_event_without_the_secret(
    receiver: MakeReceiver, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await receiver([400], text="invalid_payload")
    secret_url = f"{r.url}/services/{SLACK_TOKEN}"
    secrets = FakeSecrets({("dsguard", "alert-slack", "url"): secret_url.encode()})
    sinks = build_sinks(
        parsed_alerts(
            {"type": "Slack", "urlSecretRef": {"namespace": "dsguard", "name": "alert-slack", "key": "url"}}
        ),
        session,
        secrets,
    )
    events_api = FakeEventsAPI()
    recorder = EventRecorder(events_api, instance="dsguard-guard-7d9f")
    registry = CollectorRegistry()
    d = dispatcher([recorder, *sinks], recorder, registry)
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    await d.close(1)

    assert len(r.seen) == 1  # no retry
    assert metric(registry, "slack-0", "failed") == 1 and metric(registry, "slack-0", "retry") == 0
    assert metric(registry, "events", "delivered") == 1
    paused, failed = events_api.created
    assert paused["reason"] == "RolloutPaused" and paused["type"] == "Warning"
    assert failed["reason"] == DELIVERY_FAILED and failed["type"] == "Warning"
    assert failed["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "namespace": "kube-system",
        "name": "node-agent",
        "uid": UID,
    }
    message = failed["message"]
    assert message.startswith("alert sink slack-0 could not deliver the paused alert (revision 5d9c7b8f6): ")
    assert "HTTP 400: invalid_payload" in message and "Secret dsguard/alert-slack" in message
    everything = repr(sinks) + repr(events_api.created) + caplog.text
    assert SLACK_TOKEN not in everything and "SECRET" not in everything
    assert "slack-0" in caplog.text and "NOT delivered" in caplog.text


async def test_give_up_after_records_delivery_failed(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    r = await receiver([503] * 100)
    now = 0.0

    def clock() -> float:
        return now

    async def sleep(delay: float) -> None:  # virtual time: half an hour of backoff in milliseconds
        nonlocal now
        now += delay
        await asyncio.sleep(0)

    failures = Failures()
    registry = CollectorRegistry()
    d = dispatcher(
        [WebhookSink(r.url, session)],
        failures,
        registry,
        base_delay=1.0,
        max_delay=60.0,
        give_up_after=1800.0,
        clock=clock,
        sleep=sleep,
    )
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    await d.close(1)
    [(key, sink, error)] = failures.recorded
    assert (key, sink) == (make_alert().key, "webhook")
    attempts = len(r.seen)
    assert error.startswith(f"gave up after {attempts} attempts in 1800s; last error: ")
    assert error.endswith(": HTTP 503: ok")
    assert now == pytest.approx(1800.0)  # the last attempt is right at the deadline, not past it
    assert 30 < attempts < 80  # backoff capped at 60s with jitter, not a tight loop
    assert metric(registry, "webhook", "retry") == attempts - 1


async def test_dedupe_and_rearm_after_resume(receiver: MakeReceiver, session: aiohttp.ClientSession) -> None:
    r = await receiver()
    registry = CollectorRegistry()
    d = dispatcher([WebhookSink(r.url, session)], Failures(), registry)
    paused = make_alert()
    assert d.submit(paused)
    assert not d.submit(paused)  # queued
    assert not d.submit(make_alert(at=AT + timedelta(seconds=5)))  # same key, later: still the same alert
    assert d.pending() == 1
    await d.start()
    await d.wait_idle(WAIT)
    assert not d.submit(paused)  # delivered
    assert metric(registry, "webhook", "deduplicated") == 3
    assert d.submit(make_alert(AlertKind.RESUMED))
    await d.wait_idle(WAIT)
    # Paused again on the same revision after a resume: that is news, not a repeat.
    assert d.submit(make_alert(at=AT + timedelta(minutes=10)))
    await d.wait_idle(WAIT)
    await d.close(1)
    assert [s.json()["kind"] for s in r.seen] == ["paused", "resumed", "paused"]
    assert r.seen[0].headers[DELIVERY_HEADER] != r.seen[2].headers[DELIVERY_HEADER]


async def test_a_sink_that_is_down_does_not_delay_the_others(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    class Stuck:
        name = "stuck"

        async def send(self, alert: Alert) -> None:
            await release.wait()

    r = await receiver()
    d = dispatcher([Stuck(), WebhookSink(r.url, session)], Failures(), CollectorRegistry())
    await d.start()
    for kind in (AlertKind.PAUSED, AlertKind.STALLED):
        d.submit(make_alert(kind))
    await r.wait_for(2)
    assert [s.json()["kind"] for s in r.seen] == ["paused", "stalled"]  # in order, unhindered
    with pytest.raises(TimeoutError, match="alert deliveries still pending"):
        await d.wait_idle(0.01)  # the stuck sink still holds both
    release.set()
    await d.wait_idle(WAIT)
    await d.close(1)


async def test_close_records_what_is_left(session: aiohttp.ClientSession) -> None:
    failures = Failures()
    retrying = asyncio.Event()

    async def sleep(delay: float) -> None:
        retrying.set()
        await asyncio.sleep(delay)

    down = f"http://127.0.0.1:{free_port()}/"
    d = dispatcher([WebhookSink(down, session)], failures, CollectorRegistry(), sleep=sleep)
    await d.start()
    d.submit(make_alert())
    d.submit(make_alert(AlertKind.STALLED))
    async with asyncio.timeout(WAIT):
        await retrying.wait()  # the first alert has failed once: close() must report that error
    await d.close(0.05)
    assert d.pending() == 0
    assert [(k.rsplit("/", 1)[1], s) for k, s, _ in failures.recorded] == [
        ("paused", "webhook"),
        ("stalled", "webhook"),
    ]
    first, second = (e for _, _, e in failures.recorded)
    assert first.startswith("not delivered before shutdown; last error: ") and "cannot connect" in first
    assert second == "not delivered before shutdown"
    with pytest.raises(RuntimeError, match="after the dispatcher was closed"):
        d.submit(make_alert(AlertKind.RESUMED))


async def test_a_broken_sink_or_recorder_does_not_stop_delivery(
    receiver: MakeReceiver, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        name = "broken"

        async def send(self, alert: Alert) -> None:
            raise KeyError("bug")

    class BrokenRecorder:
        async def delivery_failed(self, alert: Alert, sink: str, error: str) -> None:
            raise RuntimeError("apiserver down")

    r = await receiver()
    d = dispatcher([Broken(), WebhookSink(r.url, session)], BrokenRecorder(), CollectorRegistry())
    await d.start()
    d.submit(make_alert())
    d.submit(make_alert(AlertKind.STALLED))
    await d.wait_idle(WAIT)
    await d.close(1)
    assert len(r.seen) == 2
    assert "could not record AlertDeliveryFailed" in caplog.text and "unexpected KeyError" in caplog.text


async def test_sink_names_must_be_unique(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="unique"):
        AlertDispatcher(
            [WebhookSink("http://a", session), WebhookSink("http://b", session)], recorder=Failures()
        )


# --- secrets ------------------------------------------------------------------------------------


async def test_secrets_never_in_repr_str_errors_or_logs(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    secrets = FakeSecrets(
        {
            ("dsguard", "alert-slack", "url"): f"http://127.0.0.1:{port}/services/{SLACK_TOKEN}".encode(),
            ("dsguard", "alert-hmac", "key"): HMAC_KEY,
            ("dsguard", "am", "url"): f"http://dsguard:pa55SECRETword@127.0.0.1:{port}".encode(),
        }
    )
    slack, am = parsed_alerts(
        {"type": "Slack", "urlSecretRef": {"namespace": "dsguard", "name": "alert-slack", "key": "url"}},
        {"type": "Alertmanager", "urlSecretRef": {"namespace": "dsguard", "name": "am", "key": "url"}},
    )
    # A password inline, which the policy parser refuses (tests/unit/test_policy.py): should one
    # reach a sink anyway, it is not shown either.
    inline = AlertSink(
        AlertType.WEBHOOK,
        url=f"http://user:inlineSECRET@127.0.0.1:{port}/hook",
        hmac_secret_ref=SecretRef("dsguard", "alert-hmac", "key"),
    )
    sinks = build_sinks([slack, inline, am], session, secrets)
    shown = [repr(sinks), str(sinks), repr(SecretValue.literal(HMAC_KEY)), str(SecretValue.literal("x"))]
    assert "Secret dsguard/alert-slack key 'url'" in shown[0] and "alert-hmac" in shown[0]
    for sink in sinks:
        with pytest.raises(SinkError) as err:
            await sink.send(make_alert())
        shown.append(str(err.value))
    failures = Failures()
    d = dispatcher(sinks, failures, CollectorRegistry(), give_up_after=0.05)
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    await d.close(1)
    assert len(failures.recorded) == 3
    text = "\n".join([*shown, *(e for _, _, e in failures.recorded), caplog.text])
    assert "cannot connect to 127.0.0.1" in text
    for secret in (SLACK_TOKEN, HMAC_KEY.decode(), "pa55SECRETword", "inlineSECRET", "SECRET"):
        assert secret not in text


async def test_missing_secret_or_key_is_a_clear_error(session: aiohttp.ClientSession) -> None:
    secrets = {"alert-hmac": {"other": base64.b64encode(b"x").decode()}}

    async def read_secret(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if name not in secrets:
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
            }
            return web.json_response(status | {"message": f'secrets "{name}" not found'}, status=404)
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}}
        return web.json_response(body | {"data": secrets[name]})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", read_secret)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    cfg = client.Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        async with client.ApiClient(configuration=cfg) as api:
            reader = KubeSecretReader(api)
            assert await reader.read("dsguard", "alert-hmac", "other") == b"x"
            with pytest.raises(
                SecretError, match=r"^Secret dsguard/alert-hmac has no key 'key' \(it has 'other'\)$"
            ):
                await reader.read("dsguard", "alert-hmac", "key")
            with pytest.raises(
                SecretError, match=r"^Secret dsguard/gone not found \(wanted its key 'url'\)$"
            ):
                await reader.read("dsguard", "gone", "url")
            # Through a sink: transient (the Secret may be fixed while we back off), same words.
            ref = SecretRef("dsguard", "alert-hmac", "key")
            sink = WebhookSink("http://127.0.0.1:1/", session, hmac_key=SecretValue.from_secret(ref, reader))
            with pytest.raises(SinkError, match="Secret dsguard/alert-hmac has no key 'key'") as err:
                await sink.send(make_alert())
            assert not err.value.permanent
    finally:
        await runner.cleanup()


# --- Events -------------------------------------------------------------------------------------


async def test_event_body_through_the_kubernetes_client() -> None:
    created: list[dict[str, Any]] = []
    answers = [201, 422, 500]

    async def create_event(request: web.Request) -> web.Response:
        body = await request.json()
        created.append(body)
        status = answers.pop(0)
        if status != 201:
            failure = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status}
            return web.json_response(failure | {"message": f"refused {status}"}, status=status)
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/events", create_event)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    cfg = client.Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        async with client.ApiClient(configuration=cfg) as api:
            recorder = EventRecorder.for_client(api, instance="dsguard-guard-0")
            alert = make_alert(AlertKind.RESUMED, failing=200, at=datetime(2025, 5, 1, 12, 0, tzinfo=UTC))
            await recorder.send(alert)
            with pytest.raises(SinkError, match="HTTP 422 refused 422") as err:
                await recorder.send(alert)
            assert err.value.permanent
            with pytest.raises(SinkError, match="HTTP 500 refused 500") as err:
                await recorder.send(alert)
            assert not err.value.permanent
    finally:
        await runner.cleanup()

    event = created[0]
    name = event["metadata"].pop("name")
    assert name.startswith("node-agent.") and len(name) == len("node-agent.") + 16
    assert name != created[1]["metadata"]["name"]
    message = event.pop("message")
    assert len(message.encode()) <= 1024 and message.startswith(alert.summary + "; revision 5d9c7b8f6")
    assert event == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": "kube-system"},
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "namespace": "kube-system",
            "name": "node-agent",
            "uid": UID,
        },
        "reason": "RolloutResumed",
        "action": "Resume",
        "type": "Normal",
        "source": {"component": "dsguard-guard"},
        "reportingComponent": "dsguard.io/guard",
        "reportingInstance": "dsguard-guard-0",
        "eventTime": "2025-05-01T12:00:00.000000Z",  # six digits even when they are all 0
        "firstTimestamp": "2025-05-01T12:00:00Z",
        "lastTimestamp": "2025-05-01T12:00:00Z",
        "count": 1,
    }


# --- configuration ------------------------------------------------------------------------------


async def test_build_sinks_names_and_types(session: aiohttp.ClientSession) -> None:
    ref = {"namespace": "dsguard", "name": "alert-slack", "key": "url"}
    sinks = build_sinks(
        parsed_alerts(
            {"type": "Slack", "urlSecretRef": ref},
            {"type": "Webhook", "url": "https://alerts.example.internal/dsguard"},
            {"type": "Alertmanager", "url": "http://alertmanager.monitoring:9093"},
        ),
        session,
        FakeSecrets({}),
        name_prefix="policy-a/",
    )
    assert [type(s) for s in sinks] == [SlackSink, WebhookSink, AlertmanagerSink]
    assert [s.name for s in sinks] == ["policy-a/slack-0", "policy-a/webhook-1", "policy-a/alertmanager-2"]


@dataclass
class PendingAlerts:
    """What the Notifier reports to (the guard's Outbox)."""

    settled: list[Alert] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def alert_settled(self, alert: Alert) -> None:
        self.settled.append(alert)
        self.changed.set()

    def will_resend(self, alert: Alert) -> bool:
        return True


async def test_notifier_routes_to_the_policys_sinks_and_reports_settled_alerts(
    receiver: MakeReceiver, session: aiohttp.ClientSession
) -> None:
    r = await receiver()
    events_api = FakeEventsAPI()
    pending = PendingAlerts()
    notifier = Notifier(
        session,
        secrets=FakeSecrets({}),
        recorder=EventRecorder(events_api, instance="dsguard-guard-0"),
        registry=CollectorRegistry(),
        pending=pending,
    )
    hook = {"type": "Webhook", "url": f"{r.url}/hook"}
    paused, stalled, resumed = (
        make_alert(k) for k in (AlertKind.PAUSED, AlertKind.STALLED, AlertKind.RESUMED)
    )
    notifier(paused, GuardPolicy(alerts=parsed_alerts(hook)))
    notifier(stalled, GuardPolicy())  # no alert sinks: the Event only
    notifier(resumed, GuardPolicy(failure_threshold=9, alerts=parsed_alerts(hook)))  # the same sinks
    try:
        await r.wait_for(2)
        async with asyncio.timeout(WAIT):
            while len(pending.settled) < 3:
                pending.changed.clear()
                await pending.changed.wait()
    finally:
        await notifier.close(1)
    assert [s.path for s in r.seen] == ["/hook", "/hook"]
    assert [s.json()["kind"] for s in r.seen] == ["paused", "resumed"]
    assert sorted(e["reason"] for e in events_api.created) == [
        "RolloutPaused",
        "RolloutResumed",
        "RolloutStalled",
    ]
    assert {a.kind for a in pending.settled} == {AlertKind.PAUSED, AlertKind.STALLED, AlertKind.RESUMED}


# --- Alert.from_json: the pending alerts read back -----------------------------------------------

_names = st.text(st.characters(codec="utf-8"), max_size=40)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    zone = draw(
        st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))])
    )
    at = draw(
        st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(zone)
        )
    )
    return Alert(
        kind=draw(st.sampled_from(list(AlertKind))),
        namespace=draw(_names),
        daemonset=draw(_names),
        uid=draw(_names),
        revision=draw(_names),
        summary=draw(_names),
        failing=tuple(
            draw(st.lists(st.builds(FailingPod, pod=_names, node=_names, reason=_names), max_size=4))
        ),
        policy=draw(_names),
        at=at,
    )


@given(alerts())
def test_alert_from_json_round_trips(alert: Alert) -> None:
    assert Alert.from_json(alert.to_json()) == alert
    assert Alert.from_json(orjson.loads(orjson.dumps(alert.to_json()))) == alert  # through the annotation


def _body(**changes: Any) -> dict[str, Any]:
    body = make_alert(failing=1).to_json()
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([], "must be a JSON object, got list"),
        ({}, "unsupported alert version None"),
        (_body(version=2), "unsupported alert version 2"),
        (_body(version=True), "unsupported alert version True"),
        (_body(kind="exploded"), "unknown alert kind 'exploded'"),
        (_body(kind=None), "'kind' is missing"),
        (_body(daemonset="node-agent"), "'daemonset' must be an object"),
        (
            _body(daemonset={"namespace": "ns", "name": "a", "uid": 7}),
            "'daemonset.uid' must be a string, not int",
        ),
        (_body(summary=None), "'summary' is missing"),
        (_body(at="yesterday"), "'at' is not an RFC 3339 time: 'yesterday'"),
        (_body(at="2025-05-01T12:00:00"), "'at' has no time zone"),
        (_body(failing={"pod": "x"}), "'failing' must be a list"),
        (_body(failing=["x"]), "'failing[0]' must be an object"),
        (_body(failing=[{"pod": "p", "node": "n"}]), "'failing[0].reason' is missing"),
        (_body(severity="info"), "severity 'info' does not match kind paused"),
        (_body(key="other/5d9c7b8f6/paused"), "key 'other/5d9c7b8f6/paused' does not match its fields"),
    ],
)
def test_alert_from_json_rejects_malformed_entries_clearly(entry: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Alert.from_json(entry)


# --- on_settled: when every sink is done with an alert ---------------------------------------------


class Scripted:
    """A sink that answers from a script: "ok", "retry" (transient), "fail" (permanent), or waits."""

    def __init__(self, name: str, *script: str, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.script = list(script)
        self.gate = gate
        self.sent: list[str] = []

    async def send(self, alert: Alert) -> None:
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if self.script else "ok"
        self.sent.append(alert.key)
        if step != "ok":
            raise SinkError(f"{self.name}: {step}", permanent=step == "fail")


async def test_on_settled_once_every_sink_delivered() -> None:
    settled: list[Alert] = []
    gate = asyncio.Event()
    slow = Scripted("slow", gate=gate)
    d = dispatcher([Scripted("events"), slow], Failures(), CollectorRegistry(), on_settled=settled.append)
    await d.start()
    paused = make_alert()
    d.submit(paused)
    later = make_alert(at=AT + timedelta(seconds=1))  # the same key while in flight: settled with it
    assert not d.submit(later)
    with pytest.raises(TimeoutError):
        await d.wait_idle(0.05)
    assert settled == []  # one sink still holds it
    gate.set()
    await d.wait_idle(WAIT)
    assert settled == [paused, later]
    await d.close(1)
    assert settled == [paused, later]


async def test_on_settled_after_a_permanent_failure_and_it_is_recorded() -> None:
    settled: list[Alert] = []
    failures = Failures()
    d = dispatcher(
        [Scripted("events"), Scripted("webhook", "retry", "fail")], failures, CollectorRegistry(),
        on_settled=settled.append,
    )  # fmt: skip
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    assert settled == [make_alert()]
    assert [(k, s) for k, s, _ in failures.recorded] == [(make_alert().key, "webhook")]
    await d.close(1)


async def test_on_settled_after_giving_up() -> None:
    now = 0.0

    async def sleep(delay: float) -> None:
        nonlocal now
        now += delay
        await asyncio.sleep(0)

    settled: list[Alert] = []
    failures = Failures()
    d = dispatcher(
        [Scripted("webhook", *["retry"] * 1000)], failures, CollectorRegistry(),
        base_delay=1.0, max_delay=60.0, give_up_after=1800.0, clock=lambda: now, sleep=sleep,
        on_settled=settled.append,
    )  # fmt: skip
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    assert settled == [make_alert()]
    assert failures.recorded[0][2].startswith("gave up after")
    await d.close(1)


async def test_a_key_every_sink_is_done_with_settles_at_once() -> None:
    settled: list[Alert] = []
    d = dispatcher([Scripted("events")], Failures(), CollectorRegistry(), on_settled=settled.append)
    await d.start()
    d.submit(make_alert())
    await d.wait_idle(WAIT)
    resent = make_alert(at=AT + timedelta(minutes=1))  # say, resent from the DaemonSet
    assert not d.submit(resent)  # deduplicated: not sent again...
    assert settled == [make_alert(), resent]  # ...and nothing is left to wait for
    await d.close(1)


@pytest.mark.parametrize("resend", [True, False])
async def test_not_settled_at_shutdown_and_the_failure_says_whether_it_is_resent(resend: bool) -> None:
    settled: list[Alert] = []
    failures = Failures()
    stuck = Scripted("webhook", gate=asyncio.Event())
    d = dispatcher(
        [Scripted("events"), stuck], failures, CollectorRegistry(),
        on_settled=settled.append, will_resend=lambda alert: resend,
    )  # fmt: skip
    await d.start()
    d.submit(make_alert())
    with pytest.raises(TimeoutError):
        await d.wait_idle(0.05)
    await d.close(0.05)
    assert settled == []  # still pending on the DaemonSet: for the next guard
    [(key, sink, error)] = failures.recorded
    assert (key, sink) == (make_alert().key, "webhook")
    said = "the next guard will send it again (it is still pending on the DaemonSet)"
    assert (said in error) is resend
    assert error.startswith("not delivered before shutdown")


async def test_a_failing_on_settled_does_not_stop_the_sink(caplog: pytest.LogCaptureFixture) -> None:
    def boom(alert: Alert) -> None:
        raise RuntimeError("bug")

    sink = Scripted("events")
    d = dispatcher([sink], Failures(), CollectorRegistry(), on_settled=boom)
    await d.start()
    d.submit(make_alert())
    d.submit(make_alert(AlertKind.STALLED))
    await d.wait_idle(WAIT)
    await d.close(1)
    assert len(sink.sent) == 2 and "on_settled failed" in caplog.text
