"""Where alerts go over HTTP: Slack incoming webhooks, a signed JSON webhook, Alertmanager v2.

Generic webhook (`WebhookSink`): `POST <url>` with the body `Alert.to_json()` (schema in
`guard.notify.alert`) as compact UTF-8 JSON, and these headers:

    Content-Type: application/json
    X-Dsguard-Event: paused                  # the alert kind: paused | rolled_back | resumed | stalled
    X-Dsguard-Delivery: <uuid>               # the same on every attempt of one alert to one sink
    X-Dsguard-Signature: sha256=<hex>        # HMAC-SHA256 of the exact body bytes, keyed with the Secret
                                             # named by hmacSecretRef; sent only when that is configured

A receiver verifies the signature over the raw body before parsing it (`verify_signature`, a
constant-time compare). Answers: any 2xx is success; 408, 429, 5xx, timeouts and connection
errors are retried with backoff; any other status is final and recorded as an
AlertDeliveryFailed Event. Redirects are not followed (they are final too).

Credentials (a Slack URL, an HMAC key, a URL with a password in it) come from Secrets, read at
every send so a Secret created or rotated after startup is used at once. They never appear in
an exception, a log line or a repr: errors name the Secret (namespace/name/key), not its value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from dsguard.policy import AlertSink, AlertType, SecretRef
from guard.notify.alert import Alert, AlertKind, rfc3339

SIGNATURE_HEADER = "X-Dsguard-Signature"
DELIVERY_HEADER = "X-Dsguard-Delivery"
EVENT_HEADER = "X-Dsguard-Event"
DEFAULT_TIMEOUT = 10.0
SLACK_MAX_PODS = 10
# Fixed namespace for the uuid5 delivery ids: the same alert to the same sink gets the same id.
_DELIVERY_NS = uuid.UUID("6f0c8a52-3d4e-4f21-9a57-0d5b1c2e7a94")


class SinkError(Exception):
    """A delivery failed. `permanent`: retrying the same request cannot help (4xx, bad config)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class SecretError(Exception):
    """A Secret or key is missing or unreadable. The message names namespace/name/key, never a value."""


class Sink(Protocol):
    name: str  # unique within a dispatcher: dedupe, metrics and AlertDeliveryFailed Events use it

    async def send(self, alert: Alert) -> None: ...


class SecretReader(Protocol):
    async def read(self, namespace: str, name: str, key: str) -> bytes: ...


class KubeSecretReader:
    """Reads one key of a Secret through the API (the guard's RBAC grants get on those Secrets)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = client.CoreV1Api(api_client)

    def __repr__(self) -> str:
        return "KubeSecretReader()"

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        where = f"Secret {namespace}/{name}"
        try:
            secret = await self._api.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                raise SecretError(f"{where} not found (wanted its key {key!r})") from None
            # Not str(e): it carries the response body and headers.
            raise SecretError(f"{where}: cannot read it: HTTP {e.status} {e.reason}") from None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SecretError(f"{where}: cannot read it: {type(e).__name__}") from None
        data: Mapping[str, str] = secret.data or {}
        if key not in data:
            has = f"it has {', '.join(repr(k) for k in sorted(data))}" if data else "it has no data"
            raise SecretError(f"{where} has no key {key!r} ({has})")
        try:
            return base64.b64decode(data[key], validate=True)
        except (binascii.Error, ValueError):
            raise SecretError(f"{where} key {key!r} is not valid base64") from None


class SecretValue:
    """A credential a sink uses: inline, or read from a Secret at each use. Never shows its value."""

    __slots__ = ("_inline", "_reader", "ref")

    def __init__(
        self, *, inline: bytes | None = None, ref: SecretRef | None = None, reader: SecretReader | None = None
    ) -> None:
        if (inline is None) == (ref is None) or (ref is not None and reader is None):
            raise ValueError("SecretValue needs either inline=... or both ref=... and reader=...")
        self._inline = inline
        self.ref = ref
        self._reader = reader

    @classmethod
    def literal(cls, value: bytes | str) -> SecretValue:
        return cls(inline=value.encode() if isinstance(value, str) else value)

    @classmethod
    def from_secret(cls, ref: SecretRef, reader: SecretReader) -> SecretValue:
        return cls(ref=ref, reader=reader)

    def describe(self) -> str:
        if self.ref is None:
            return "an inline value"
        return f"Secret {self.ref.namespace}/{self.ref.name} key {self.ref.key!r}"

    def __repr__(self) -> str:
        return f"SecretValue({self.describe()})"

    __str__ = __repr__

    async def get(self) -> bytes:
        """The value. Raises SecretError (message without the value) when it can't be read."""
        if self._inline is not None:
            return self._inline
        assert self.ref is not None and self._reader is not None
        return await self._reader.read(self.ref.namespace, self.ref.name, self.ref.key)


# --- shared HTTP plumbing -------------------------------------------------------------------------


def _origin(url: URL) -> str:
    port = "" if url.is_default_port() else f":{url.port}"
    return f"{url.scheme}://{url.host}{port}"


def _public(url: str) -> str:
    """A URL from the policy as shown in errors: without user info, which may hold a password."""
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


class _HTTPSink:
    name: str

    def __init__(
        self, name: str, url: str | SecretValue, session: aiohttp.ClientSession, timeout: float
    ) -> None:
        self.name = name
        self._url = url
        self._session = session
        self._timeout = timeout

    def __repr__(self) -> str:
        where = repr(self._url) if isinstance(self._url, SecretValue) else _public(self._url)
        return f"{type(self).__name__}(name={self.name!r}, url={where})"

    async def _endpoint(self, path: str = "") -> tuple[str, str, list[str]]:
        """(url to post to, how errors name it, strings to redact from errors)."""
        if isinstance(self._url, str):
            parsed = URL(self._url)
            sensitive = [parsed.password] if parsed.password else []
            return self._url.rstrip("/") + path if path else self._url, _public(self._url), sensitive
        try:
            raw = await self._url.get()
        except SecretError as e:
            # Transient: the Secret may be created or fixed while we back off.
            raise SinkError(str(e)) from None
        text = raw.decode("utf-8", errors="replace").strip()  # `echo url > file` leaves a newline
        try:
            parsed = URL(text)
            valid = parsed.scheme in ("http", "https") and bool(parsed.host)
        except ValueError:
            valid = False
        if not valid:
            raise SinkError(f"the value of {self._url.describe()} is not an http(s) URL", permanent=True)
        full = text.rstrip("/") + path if path else text
        # The whole URL is the credential (Slack's token is its path): name only its origin.
        sensitive = [full, text, str(URL(full)), parsed.raw_path_qs, parsed.path_qs]
        sensitive += [parsed.password] if parsed.password else []
        return full, f"{_origin(parsed)} (URL from {self._url.describe()})", sensitive

    async def _post(
        self, url: str, where: str, sensitive: Sequence[str], body: bytes, headers: dict[str, str]
    ) -> None:
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                status = resp.status
                detail = " ".join((await resp.content.read(300)).decode("utf-8", errors="replace").split())
        except TimeoutError:
            raise SinkError(f"{where}: no answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise SinkError(_redact(f"{where}: {_client_error(e)}", sensitive)) from None
        # 408 and 429 say "later"; other 3xx/4xx say "never like this".
        permanent = 300 <= status < 500 and status not in (408, 429)
        text = f"{where}: HTTP {status}" + (f": {detail}" if detail else "")
        raise SinkError(_redact(text, sensitive), permanent=permanent)


def _client_error(e: aiohttp.ClientError) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect to {e.host}:{e.port}: {e.os_error.strerror or type(e.os_error).__name__}"
    if isinstance(e, aiohttp.ClientResponseError | aiohttp.InvalidURL):
        return type(e).__name__  # their str() embeds the full URL
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _redact(text: str, sensitive: Iterable[str]) -> str:
    # Defence in depth: error texts are built not to contain URLs. Longest first, so a URL goes
    # whole; strings under 4 characters (a path of "/", a toy password) would only mangle words.
    for s in sorted({s for s in sensitive if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, "<redacted>")
    return text


# --- Slack ----------------------------------------------------------------------------------------

_EMOJI = {
    AlertKind.PAUSED: ":octagonal_sign:",
    AlertKind.ROLLED_BACK: ":rewind:",
    AlertKind.RESUMED: ":arrow_forward:",
    AlertKind.STALLED: ":hourglass:",
    AlertKind.GATE_ERROR: ":grey_question:",
    AlertKind.COMPLETED: ":white_check_mark:",
}


def _mrkdwn(text: str, limit: int = 1000) -> str:
    # Slack's three control characters; the rest of mrkdwn is harmless in our strings.
    return _clip(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), limit)


def _clip(text: str, limit: int) -> str:
    # Slack rejects the whole message (HTTP 400) when a block's text is over its limit.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(alert: Alert) -> dict[str, Any]:
    """The incoming-webhook body: `text` for notifications, `blocks` for the message itself."""
    target = f"{alert.namespace}/{alert.daemonset}"
    title = f"DaemonSet rollout {alert.kind.words}"
    fields = [
        {"type": "mrkdwn", "text": f"*DaemonSet*\n`{_mrkdwn(target)}`"},
        {"type": "mrkdwn", "text": f"*Action*\n{alert.kind.words}"},
        {"type": "mrkdwn", "text": f"*Revision*\n`{_mrkdwn(alert.revision)}`"},
    ]
    if alert.policy:
        fields.append({"type": "mrkdwn", "text": f"*Policy*\n`{_mrkdwn(alert.policy)}`"})
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{_EMOJI[alert.kind]} {title}"}},
        {"type": "section", "fields": fields},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(alert.summary, 2900)}},
    ]
    if alert.failing:
        shown = alert.failing[:SLACK_MAX_PODS]
        head = (
            f"*Failing pods* ({len(shown)} of {len(alert.failing)})"
            if len(alert.failing) > len(shown)
            else "*Failing pods*"
        )
        lines = [
            f"• `{_mrkdwn(p.pod, 253)}` on `{_mrkdwn(p.node, 253)}`: {_mrkdwn(p.reason, 200)}" for p in shown
        ]
        text = "\n".join([head, *lines])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, 2900)}})
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"dsguard · {rfc3339(alert.at)}"}]}
    )
    return {"text": _mrkdwn(f"{title}: {target}: {alert.summary}", 2900), "blocks": blocks}


class SlackSink(_HTTPSink):
    def __init__(
        self,
        url: str | SecretValue,
        session: aiohttp.ClientSession,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "slack",
    ) -> None:
        super().__init__(name, url, session, timeout)

    async def send(self, alert: Alert) -> None:
        url, where, sensitive = await self._endpoint()
        body = orjson.dumps(slack_message(alert))
        await self._post(url, where, sensitive, body, {"Content-Type": "application/json"})


# --- generic signed webhook -----------------------------------------------------------------------


def sign(body: bytes, key: bytes) -> str:
    """The X-Dsguard-Signature value for `body`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str, key: bytes) -> bool:
    """Whether `header` (an X-Dsguard-Signature value) signs exactly `body` with `key`. Constant time."""
    expected = sign(body, key).encode()
    try:
        given = header.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, given)


def delivery_id(sink: str, alert: Alert) -> str:
    """Same for every attempt of `alert` to `sink`; a new alert (even of the same key) gets a new one."""
    return str(uuid.uuid5(_DELIVERY_NS, f"{sink}\x00{alert.key}\x00{rfc3339(alert.at)}"))


class WebhookSink(_HTTPSink):
    def __init__(
        self,
        url: str | SecretValue,
        session: aiohttp.ClientSession,
        *,
        hmac_key: bytes | SecretValue | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "webhook",
    ) -> None:
        super().__init__(name, url, session, timeout)
        self._key = SecretValue.literal(hmac_key) if isinstance(hmac_key, bytes) else hmac_key

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, hmac_key={self._key!r})"

    async def send(self, alert: Alert) -> None:
        url, where, sensitive = await self._endpoint()
        body = orjson.dumps(alert.to_json())
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: alert.kind.value,
            DELIVERY_HEADER: delivery_id(self.name, alert),
        }
        if self._key is not None:
            try:
                key = await self._key.get()
            except SecretError as e:
                raise SinkError(str(e)) from None
            if not key:
                raise SinkError(f"the HMAC key in {self._key.describe()} is empty", permanent=True)
            headers[SIGNATURE_HEADER] = sign(body, key)
        await self._post(url, where, sensitive, body, headers)


# --- Alertmanager ---------------------------------------------------------------------------------


def _description(alert: Alert, limit: int = 20) -> str:
    lines = [f"DaemonSet {alert.namespace}/{alert.daemonset}, revision {alert.revision}: {alert.summary}"]
    if alert.policy:
        lines.append(f"Policy: {alert.policy}")
    if alert.failing:
        lines.append("Failing pods:")
        lines += [f"- {p.pod} on {p.node}: {p.reason}" for p in alert.failing[:limit]]
        if len(alert.failing) > limit:
            lines.append(f"- and {len(alert.failing) - limit} more")
    return "\n".join(lines)


def alertmanager_alerts(
    alert: Alert, *, now: datetime, generator_url: str = "", paused_for: timedelta | None = None
) -> list[dict[str, Any]]:
    """The body of POST /api/v2/alerts (postableAlerts in Alertmanager's api/v2/openapi.yaml).

    RESUMED resolves the PAUSED alert: same labels (so the same fingerprint), endsAt now.
    Alertmanager resolves an alert whose endsAt is unset after its resolve_timeout (5m by default)
    unless it is sent again, and dsguard sends once: a PAUSED alert therefore carries an endsAt
    `paused_for` ahead so it keeps firing until RESUMED resolves it (or that time passes).
    """
    kind = AlertKind.PAUSED if alert.kind is AlertKind.RESUMED else alert.kind
    item: dict[str, Any] = {
        "labels": {
            "alertname": f"DaemonSetRollout{kind.camel}",
            "namespace": alert.namespace,
            "daemonset": alert.daemonset,
            "revision": alert.revision,
            "severity": kind.severity,
        },
        "annotations": {"summary": alert.summary, "description": _description(alert)},
    }
    if alert.kind is AlertKind.RESUMED:
        # No startsAt: Alertmanager keeps the firing alert's; max() keeps endsAt >= startsAt.
        item["endsAt"] = rfc3339(max(now, alert.at))
    else:
        item["startsAt"] = rfc3339(alert.at)
        if kind is AlertKind.PAUSED and paused_for is not None:
            item["endsAt"] = rfc3339(alert.at + paused_for)
    if generator_url:
        item["generatorURL"] = generator_url
    return [item]


class AlertmanagerSink(_HTTPSink):
    def __init__(
        self,
        url: str | SecretValue,
        session: aiohttp.ClientSession,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "alertmanager",
        generator_url: str = "",
        paused_for: timedelta | None = timedelta(hours=24),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(name, url, session, timeout)
        self._generator_url = generator_url
        self._paused_for = paused_for
        self._now = now

    async def send(self, alert: Alert) -> None:
        url, where, sensitive = await self._endpoint("/api/v2/alerts")
        body = orjson.dumps(
            alertmanager_alerts(
                alert, now=self._now(), generator_url=self._generator_url, paused_for=self._paused_for
            )
        )
        await self._post(url, where, sensitive, body, {"Content-Type": "application/json"})


# --- from the policy ------------------------------------------------------------------------------


def build_sinks(
    alerts: Sequence[AlertSink],
    session: aiohttp.ClientSession,
    secrets: SecretReader,
    *,
    name_prefix: str = "",
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Sink]:
    """Sinks for a policy's `spec.guard.alerts`, named `<prefix><type>-<index>`.

    The AlertSinks are as dsguard.policy parsed them: that parser is the one place the rules on
    alert sinks are checked (and reported with their field paths), so nothing is checked here
    again. Secrets are not read here but at each send. The always-on Events sink is not among
    these: add the EventRecorder yourself.
    """
    sinks: list[Sink] = []
    for i, alert in enumerate(alerts):
        name = f"{name_prefix}{alert.type.value.lower()}-{i}"
        url: str | SecretValue
        if alert.url_secret_ref is not None:
            url = SecretValue.from_secret(alert.url_secret_ref, secrets)
        elif alert.url is not None:
            url = alert.url
        else:  # not what the parser makes
            raise ValueError(f"alert sink {name} has neither url nor urlSecretRef")
        if alert.type is AlertType.SLACK:
            sinks.append(SlackSink(url, session, timeout=timeout, name=name))
        elif alert.type is AlertType.WEBHOOK:
            hmac_key = (
                SecretValue.from_secret(alert.hmac_secret_ref, secrets)
                if alert.hmac_secret_ref is not None
                else None
            )
            sinks.append(WebhookSink(url, session, hmac_key=hmac_key, timeout=timeout, name=name))
        else:
            sinks.append(AlertmanagerSink(url, session, timeout=timeout, name=name))
    return sinks
