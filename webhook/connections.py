"""Bounds on what a client can hold on the webhook port: slow or stuck clients can't starve the
well-behaved ones (the apiserver) of connections, memory or the event loop.

- at most `max_connections` at once, and `max_connections_per_client` from one IP address, TLS
  handshakes in progress included: one more is closed at once, before any TLS work (refusing
  costs an accept and a close, so a flood of reconnects stays cheap);
- a TLS handshake must finish within `tls_handshake_timeout`;
- a request head must arrive within `read_header_timeout` of its first byte (slowloris);
- a request body within `read_timeout` of its head (the handler, webhook/server.py);
- a keep-alive connection idle for `idle_timeout` is closed (aiohttp's keepalive_timeout, which
  also closes a connection that sends nothing at all after its handshake).

The listening socket speaks plain TCP (ConnectionGate is its protocol factory): the gate sees the
client's address at accept, then upgrades the connection with loop.start_tls, so a handshake's
end, failed or timed out, is known exactly. The idle timeout is longer than the apiserver's
webhook client keeps an idle connection (90 s, k8s.io/apimachinery/pkg/util/net
SetTransportDefaults), so it is the client that closes first, never racing a request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhook.metrics import Metrics

log = logging.getLogger("dsguard.webhook")


@dataclass(frozen=True)
class ConnectionLimits:
    # ~300 KiB each (asyncio's TLS read buffer alone is 256 KiB): 500 fit the 512Mi limit of the
    # install manifests beside the caches; an apiserver needs a few dozen.
    max_connections: int = 500
    max_connections_per_client: int = 100
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
            cap = limits.max_connections
            log.warning("open files limited to %d: fewer than --max-connections %d", new, cap)


class _Slot:
    """One admitted connection's place under the caps; released once, whichever way it ends."""

    __slots__ = ("_gate", "client", "released")

    def __init__(self, gate: ConnectionGate, client: str) -> None:
        self._gate = gate
        self.client = client
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._gate._release(self.client)


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one TLS connection, wrapped: releases the connection's slot when it
    ends, and times its request heads."""

    def __init__(self, inner: asyncio.BaseProtocol, gate: ConnectionGate, slot: _Slot) -> None:
        self._inner: Any = inner  # aiohttp's RequestHandler, an asyncio.Protocol
        self._gate = gate
        self._slot = slot
        self._transport: asyncio.Transport | None = None
        self._early: list[bytes] = []  # decrypted right after the handshake, before connection_made
        # The pending head's deadline (None: no head pending), and one lazily armed timer: arming
        # and cancelling a timer per request cost ~10 µs of a review under load (a TimerHandle, two
        # heap operations); now a busy connection's timer fires once per timeout and is re-armed.
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # the deadline the timer is armed for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_request = False
        self.lost = False

    # -- the request cycle, told by the server (webhook.server.cycle_requests) ----------------------

    def request_started(self) -> None:
        self._in_request = True
        self._head_deadline = None  # the timer, if armed, finds nothing pending when it fires

    def request_finished(self) -> None:
        self._in_request = False

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _check_head(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:  # no head pending: the next head's first byte arms it again
            return
        if deadline > self._timer_at:  # a later head than the one it was armed for
            self._arm(deadline)
            return
        self._gate.metrics.read_timeouts.labels("header").inc()
        if self._transport is not None:
            self._transport.abort()

    def _arm(self, deadline: float) -> None:
        assert self._loop is not None
        self._timer_at = deadline
        self._head_timer = self._loop.call_at(deadline, self._check_head)

    # -- asyncio.Protocol, delegated ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            self._early.append(data)
            return
        if not self._in_request and self._head_deadline is None:
            # The first byte of a request head: the whole head must follow in time.
            assert self._loop is not None
            self._head_deadline = deadline = self._loop.time() + self._gate.limits.read_header_timeout
            if self._head_timer is None:
                self._arm(deadline)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_head_timer()
        self._slot.release()
        if self._transport is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Accepted(asyncio.Protocol):
    """A TCP connection until its TLS handshake is done (then its transport belongs to TLS)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        slot = self._gate.admit(client)
        if slot is None:
            transport.abort()
            return
        transport.pause_reading()  # the ClientHello is TLS's to read: start_tls resumes reading
        self._handshake = asyncio.get_running_loop().create_task(self._upgrade(transport, slot))

    async def _upgrade(self, transport: asyncio.Transport, slot: _Slot) -> None:
        gate = self._gate
        conn = GuardedConnection(gate.inner(), gate, slot)
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, conn, gate.ssl_context, server_side=True,
                ssl_handshake_timeout=gate.limits.tls_handshake_timeout,
            )  # fmt: skip
        except OSError as e:  # the client's doing: reset, not TLS, too slow (ssl.SSLError, TimeoutError)
            # Nobody awaits this task: raising would log "Task exception was never retrieved" with a
            # traceback at ERROR for every client that hangs up mid-handshake (a load tool stopping).
            slot.release()
            transport.abort()
            log.debug("TLS handshake with %s failed: %s", slot.client, e)
            return
        except BaseException:  # shutting down (cancelled)
            slot.release()
            transport.abort()
            raise
        if tls is None or conn.lost:  # closed right after the handshake: released already
            return
        conn.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only before start_tls took the transport over: the client left while it waited.
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()


class ConnectionGate:
    """The listening socket's protocol factory: admits connections by the caps and upgrades them
    to TLS; counts them from accept to close."""

    def __init__(
        self,
        limits: ConnectionLimits,
        inner: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext,
        metrics: Metrics,
    ) -> None:
        self.limits = limits
        self.inner = inner
        self.ssl_context = ssl_context
        self.metrics = metrics
        self.connections = 0
        self._by_client: dict[str, int] = {}
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        return _Accepted(self)

    def admit(self, client: str) -> _Slot | None:
        held = self._by_client.get(client, 0)
        limits = self.limits
        if self.connections >= limits.max_connections or held >= limits.max_connections_per_client:
            self.refused += 1
            self.metrics.connections_refused.inc()
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning(
                    "refused connection %d (from %s, holding %d; %d open): over --max-connections %d or "
                    "--max-connections-per-client %d", self.refused, client, held, self.connections,
                    limits.max_connections, limits.max_connections_per_client,
                )  # fmt: skip
            return None
        self.connections += 1
        self._by_client[client] = held + 1
        return _Slot(self, client)

    def _release(self, client: str) -> None:
        held = self._by_client.get(client, 0)
        self.connections -= 1
        if held == 1:
            del self._by_client[client]
        else:
            self._by_client[client] = held - 1
