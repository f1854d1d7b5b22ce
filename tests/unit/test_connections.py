"""The connection gate's request-head timeout (webhook/connections.py) over real TLS: a head must
arrive within read_header_timeout of its first byte, on a fresh connection and on a keep-alive one
whose earlier requests were answered; requests that keep coming in time are never cut off, however
long the connection lives (its one timer fires and is re-armed, never aborting a healthy one).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from dsguard.cluster_cache import ClusterCache
from tests.support.polling import poll_async
from tests.support.tls import TLSFiles, write_tls_files
from webhook.connections import ConnectionGate, ConnectionLimits
from webhook.server import WebhookState, cycle_requests, make_app
from webhook.tls import server_context

TIMEOUT = 0.4
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: dsguard\r\n\r\n"


@dataclass
class Gated:
    port: int
    client: ssl.SSLContext
    state: WebhookState


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Gated]:
    tls: TLSFiles = write_tls_files(tmp_path / "tls")
    state = WebhookState(cache=ClusterCache(static_policies=()))
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    assert runner.server is not None
    cycle_requests(runner.server)
    limits = ConnectionLimits(read_header_timeout=TIMEOUT)
    ctx = server_context(tls.cert_file, tls.key_file)
    state.gate = ConnectionGate(limits, runner.server, ctx, state.metrics)
    listener = await asyncio.get_running_loop().create_server(state.gate, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield Gated(port, ssl.create_default_context(cadata=tls.ca_pem.decode()), state)
    finally:
        listener.close()
        await runner.cleanup()


async def _answered(reader: asyncio.StreamReader) -> bool:
    """One /healthz answer read whole (status line, headers, "ok"); False if the server closed."""
    status = await reader.readline()
    if not status.startswith(b"HTTP/1.1 200"):
        return False
    await reader.readuntil(b"\r\n\r\n")
    return await reader.readexactly(2) == b"ok"


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            return await reader.read(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


@pytest.mark.parametrize(
    ("served_for", "then_trickle"),
    [
        (0.0, True),  # a fresh connection whose first head never ends: closed
        (3 * TIMEOUT, True),  # answered heads for several timeouts, then one never ends: closed
        (3 * TIMEOUT, False),  # heads that keep coming in time: never closed
    ],
)
async def test_a_request_head_must_arrive_within_the_timeout_of_its_first_byte(
    gated: Gated, served_for: float, then_trickle: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gated.port, ssl=gated.client)
    try:
        deadline = time.monotonic() + served_for
        while time.monotonic() < deadline:
            writer.write(HEALTHZ)
            assert await _answered(reader), "a request sent in time was not answered"
            await asyncio.sleep(TIMEOUT / 8)  # idle between requests does not count toward a head
        if then_trickle:
            if served_for:
                # One more answered request arms the connection's timer for its own head; the
                # unfinished head starts half a timeout later, so the timer fires while it is
                # pending but before its own deadline: it must wait for that deadline.
                await asyncio.sleep(1.5 * TIMEOUT)
                writer.write(HEALTHZ)
                assert await _answered(reader)
                await asyncio.sleep(TIMEOUT / 2)
            writer.write(HEALTHZ[:10])  # a head started, never finished
            started = time.monotonic()
            assert await _closed_by_server(reader, within=10 * TIMEOUT), "the unfinished head was not cut off"
            assert time.monotonic() - started >= TIMEOUT * 0.9
            timeouts = gated.state.metrics.read_timeouts.labels("header")._value.get()
            assert timeouts == 1
        else:
            writer.write(HEALTHZ)
            assert await _answered(reader), "a healthy keep-alive connection was cut off"
    finally:
        writer.close()


@pytest.mark.parametrize("client", ["reset", "not-tls", "hangs-up"])
async def test_a_failed_handshake_frees_its_slot_and_logs_no_traceback(
    gated: Gated, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", gated.port)
    if client == "not-tls":
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: dsguard\r\n\r\n")
        await writer.drain()
        await reader.read()  # the server closes it
    elif client == "reset":
        writer.write(b"\x16\x03\x01")  # a ClientHello begun, then a reset
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    gate = gated.state.gate
    assert gate is not None
    await poll_async(lambda: gate.connections == 0, timeout=10, what="the connection's slot released")
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    await asyncio.sleep(0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_answers_aiohttp_makes_itself_end_a_request_too(gated: Gated) -> None:
    """A 404 (no route) and a 405 (wrong method) are requests like any other: the connection stays
    usable after them, idle past the head timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gated.port, ssl=gated.client)
    try:
        for head, status in ((b"PUT /healthz", b"405"), (b"GET /nowhere", b"404")):
            writer.write(head + b" HTTP/1.1\r\nHost: dsguard\r\nContent-Length: 0\r\n\r\n")
            line = await reader.readline()
            assert line.split()[1] == status, line
            headers = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(h.split(b":")[1])
                for h in headers.split(b"\r\n")
                if h.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
        await asyncio.sleep(2 * TIMEOUT)
        writer.write(HEALTHZ)
        assert await _answered(reader), "the connection was cut off after aiohttp's own answers"
    finally:
        writer.close()
