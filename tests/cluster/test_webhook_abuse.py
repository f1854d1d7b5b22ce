"""Slow and abusive clients on the real webhook process: it keeps serving well-behaved reviews
during the abuse and after, its timeouts close the abusers, and its connection cap holds.

`dsguard webhook` runs as its own process (fixed policies and nodes, TLS, loopback: no control
plane needed) with short timeouts so they fire within the test.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from localcluster.abusive_clients import AbuserProcess, Kind, good_client
from localcluster.procs import http_get
from localcluster.static_webhook import StaticWebhook
from tests.support.builders import daemonset, node, policy
from tests.support.polling import poll_async

NS = "agents"
CAP, PER_CLIENT = 120, 60
TIMEOUTS = ["--read-header-timeout", "1s", "--tls-handshake-timeout", "1s", "--idle-timeout", "2s"]
POLICY = policy(
    "agents",
    {"enforcement": "Enforce", "tolerations": {"required": [{"key": "dedicated", "operator": "Exists"}],
                                               "onMissing": "Deny"}},
    namespaces=[NS],
)  # fmt: skip
NODES = [node(f"n{i}", labels={"kubernetes.io/os": "linux"}, kubelet="v1.33.1") for i in range(20)]


def review(i: int) -> bytes:
    ds = daemonset("agent", NS, tolerations=[{"key": "dedicated", "operator": "Exists"}])
    request: dict[str, Any] = {
        "uid": f"good-{i}",
        "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
        "namespace": NS,
        "name": "agent",
        "operation": "CREATE",
        "userInfo": {"username": "alice"},
        "object": ds,
    }
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


def allowed(data: bytes) -> bool:
    return orjson.loads(data)["response"]["allowed"] is True


@pytest.fixture
def webhook(tmp_path: Path) -> Any:
    extra = [*TIMEOUTS, "--max-connections", str(CAP), "--max-connections-per-client", str(PER_CLIENT)]
    with StaticWebhook(tmp_path, policies=[POLICY], nodes=NODES, extra_args=extra) as server:
        yield server


async def _good(server: StaticWebhook, seconds: float) -> tuple[int, list[str]]:
    lat = await good_client(
        server.url("/validate"), server.client_context(), review, duration=seconds, check=allowed
    )
    return len(lat.ok), lat.failed


async def _status_of_a_new_connection(server: StaticWebhook) -> int:
    """One review on a fresh connection: its HTTP status (0: closed without an answer, as over the cap)."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=server.client_context(), server_hostname="127.0.0.1"
        )
    except (OSError, ssl.SSLError):
        return 0
    try:
        body = review(0)
        writer.write(
            b"POST /validate HTTP/1.1\r\nHost: dsguard\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1]) if status_line else 0
    except (OSError, ssl.SSLError, TimeoutError):
        return 0
    finally:
        writer.close()


async def test_abusive_clients_neither_starve_good_ones_nor_hold_their_connections(
    webhook: StaticWebhook,
) -> None:
    served, failed = await _good(webhook, 2.0)
    assert served > 0 and not failed, failed

    # Within the caps: every well-behaved review is served during the abuse, and the server's
    # timeouts close the slowloris, idle and stuck-handshake connections (they reconnect).
    counts: dict[Kind, int] = {"slowloris": 20, "idle": 20, "handshake": 20}
    with AbuserProcess(webhook.port, webhook.ca_pem, counts) as abusers:
        await poll_async(lambda: all(abusers.opened(k) >= n for k, n in counts.items()), timeout=30,
                         what="the abusers connected")  # fmt: skip
        served, failed = await _good(webhook, 4.0)
        assert served > 0 and not failed, failed[:5]
        await poll_async(
            lambda: all(abusers.closed(k) >= n for k, n in counts.items()), timeout=30,
            what=f"the server to close each abusive connection once ({[abusers.closed(k) for k in counts]})",
        )  # fmt: skip

    # One client over its cap: its extra connections are closed at once; others are served.
    with AbuserProcess(webhook.port, webhook.ca_pem, {"idle": PER_CLIENT + 40}):
        await poll_async(
            lambda: _refused(webhook) > 0, timeout=30, what="connections over the per-client cap refused"
        )
        served, failed = await _good(webhook, 2.0)
        assert served > 0 and not failed, failed[:5]

    # Two clients filling the global cap: a new connection is closed without an answer, not left
    # hanging; when they leave, good clients are served again at once.
    half: dict[Kind, int] = {"idle": CAP // 2}
    with (
        AbuserProcess(webhook.port, webhook.ca_pem, half, source="127.0.0.2"),
        AbuserProcess(webhook.port, webhook.ca_pem, half, source="127.0.0.3"),
    ):
        await poll_async(_answered(webhook, 0), timeout=30, what="a new connection over the cap closed")
    await poll_async(_answered(webhook, 200), timeout=30, what="a new connection served again")
    served, failed = await _good(webhook, 2.0)
    assert served > 0 and not failed, failed[:5]
    metrics = await asyncio.to_thread(_metrics, webhook)
    header_timeouts = _sample(metrics, 'dsguard_webhook_read_timeouts_total{part="header"}')
    assert header_timeouts >= counts["slowloris"], metrics


def _refused(server: StaticWebhook) -> float:
    return _sample(_metrics(server), "dsguard_webhook_connections_refused_total")


def _answered(server: StaticWebhook, want: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _status_of_a_new_connection(server) == want

    return check


def _metrics(server: StaticWebhook) -> str:
    status, body = http_get(server.url("/metrics"), context=server.client_context(), timeout=5)
    assert status == 200
    return body.decode()


def _sample(text: str, name: str) -> float:
    """The value of the sample `name` (with its labels, as exposed) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
