"""Bounds on what a client can hold on the webhook port: slow or stuck clients can't starve the
well-behaved ones (the apiserver) of connections, memory or the event loop.

- a TLS handshake must finish within `tls_handshake_timeout` (asyncio's ssl_handshake_timeout);
- a request head must arrive within `read_header_timeout` of its first byte (slowloris);
- a request body within `read_timeout` of its head (the handler, webhook/server.py);
- a keep-alive connection idle for `idle_timeout` is closed (aiohttp's keepalive_timeout, which
  also closes a connection that sends nothing at all after its handshake);
- at most `max_connections` at once, handshakes in progress included: a connection over the cap
  is answered 503 and closed, so a client sees why (the apiserver applies failurePolicy).

The idle timeout is longer than the apiserver's webhook client keeps an idle connection (90 s,
k8s.io/apimachinery/pkg/util/net SetTransportDefaults), so it is the client that closes first and
never races a request against our close.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhook.metrics import Metrics

log = logging.getLogger("dsguard.webhook")

_BUSY = b'{"error": "too many connections to the dsguard webhook; retry later"}'
_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


@dataclass(frozen=True)
class ConnectionLimits:
    # ~300 KiB each (asyncio's TLS read buffer alone is 256 KiB): 500 fit the 512Mi limit of the
    # install manifests beside the caches; the apiserver needs a few dozen.
    max_connections: int = 500
    tls_handshake_timeout: float = 10.0
    read_header_timeout: float = 10.0
    read_timeout: float = 10.0
    idle_timeout: float = 120.0


def raise_open_files_limit(limits: ConnectionLimits, spare: int = 256) -> None:
    """Lift the soft limit on open files toward the hard one, so the cap, not EMFILE, bounds the
    connections (many systems default the soft limit to 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limits.max_connections + spare
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "open files limited to %d: fewer than --max-connections %d", new, limits.max_connections
            )


class GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts it and times its request heads."""

    def __init__(self, inner: asyncio.BaseProtocol, gate: ConnectionGate) -> None:
        self._inner = inner
        self._gate = gate
        self._transport: asyncio.Transport | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    # -- the request cycle, told by the server's middleware --------------------------------------

    def request_started(self) -> None:
        self._in_request = True
        self._cancel_head_timer()

    def request_finished(self) -> None:
        self._in_request = False

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._gate.metrics.read_timeouts.labels("header").inc()
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol, delegated ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._gate.opened(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._head_timer is None:
            # The first byte of a request head: the whole head must follow in time.
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._gate.limits.read_header_timeout, self._head_timed_out)
        inner: Any = self._inner  # an asyncio.Protocol (aiohttp's RequestHandler)
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        inner: Any = self._inner
        result: bool | None = inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._gate.closed(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    """Over the cap: one 503, then the connection is closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_SERVICE_UNAVAILABLE)
        transport.close()


class ConnectionGate:
    """The protocol factory for the listening socket: counts connections from accept (handshakes
    in progress too) and refuses those over the cap."""

    def __init__(
        self, limits: ConnectionLimits, inner: Callable[[], asyncio.BaseProtocol], metrics: Metrics
    ) -> None:
        self.limits = limits
        self._inner = inner
        self.metrics = metrics
        self._open: set[GuardedConnection] = set()
        # Accepted, handshake not finished: a handshake that fails or times out is never reported
        # to the protocol, so an entry leaves after tls_handshake_timeout at the latest.
        self._handshaking: dict[GuardedConnection, float] = {}
        self.refused = 0

    @property
    def connections(self) -> int:
        self._expire_handshakes()
        return len(self._open) + len(self._handshaking)

    def _expire_handshakes(self) -> None:
        if not self._handshaking:
            return
        cutoff = time.monotonic() - self.limits.tls_handshake_timeout - 1.0
        for conn, started in list(self._handshaking.items()):
            if started < cutoff:
                del self._handshaking[conn]

    def __call__(self) -> asyncio.BaseProtocol:
        if self.connections >= self.limits.max_connections:
            self.refused += 1
            self.metrics.connections_refused.inc()
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning(
                    "refused connection %d: at the cap of %d", self.refused, self.limits.max_connections
                )
            return _Refused()
        conn = GuardedConnection(self._inner(), self)
        self._handshaking[conn] = time.monotonic()
        return conn

    def opened(self, conn: GuardedConnection) -> None:
        self._handshaking.pop(conn, None)
        self._open.add(conn)

    def closed(self, conn: GuardedConnection) -> None:
        self._handshaking.pop(conn, None)
        self._open.discard(conn)
