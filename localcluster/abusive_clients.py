"""Clients that abuse an HTTPS port, and a well-behaved one that measures what it gets.

For the webhook's slow-client test and benchmark (tests/cluster/test_webhook_abuse.py,
bench/webhook_abuse.py). Each abuser holds `count` connections and reconnects whenever the server
closes one, so the pressure stays on for as long as it runs:

- slowloris: a finished TLS handshake, then a request head trickled a byte at a time, never done;
- idle: a finished TLS handshake, then nothing;
- handshake: a TCP connection that never sends its ClientHello (a TLS handshake never finished).

`closed` counts the connections the server ended: proof that its timeouts fire. The abusers run
in a process of their own (AbuserProcess), from another loopback address than the good clients
(127.0.0.2: one client to the server's per-client cap), so their own CPU work neither slows the
good clients' event loop nor shares their address.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event
from typing import Any, Literal, Self

import aiohttp

Kind = Literal["slowloris", "idle", "handshake"]
KINDS: tuple[Kind, ...] = ("slowloris", "idle", "handshake")
_HEAD = b"POST /validate HTTP/1.1\r\nHost: dsguard\r\nContent-Type: application/json\r\nX-Slow: "


@dataclass
class Abuse:
    port: int
    context: ssl.SSLContext
    kind: Kind
    count: int
    source: str = "127.0.0.2"
    trickle_interval: float = 1.0
    opened: int = 0
    closed: int = 0  # by the server (EOF, reset, or a failed read)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (self.source, 0)
        if self.kind == "handshake":
            return await asyncio.open_connection("127.0.0.1", self.port, local_addr=local)
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname="127.0.0.1", local_addr=local
        )

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Until the server closes the connection."""
        if self.kind == "slowloris":
            writer.write(_HEAD)
            while not reader.at_eof():
                writer.write(b"x")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), self.trickle_interval) == b"":
                        return
        else:
            while await reader.read(1024):
                pass

    async def _one(self) -> None:
        while True:
            try:
                reader, writer = await self._open()
            except (OSError, ssl.SSLError, TimeoutError):
                await asyncio.sleep(0.1)  # refused at accept (over a cap): try again
                continue
            self.opened += 1
            started = time.monotonic()
            try:
                await self._hold(reader, writer)
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.closed += 1
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
            if time.monotonic() - started < 0.1:
                await asyncio.sleep(0.1)  # refused at once: retry, as hard as a client in a loop would

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._one()) for _ in range(self.count)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


@contextlib.asynccontextmanager
async def abusing(
    port: int,
    context: ssl.SSLContext,
    counts: Mapping[Kind, int],
    source: str | Mapping[Kind, str] = "127.0.0.2",
) -> AsyncIterator[list[Abuse]]:
    """The abusers in this event loop (AbuserProcess runs them in a process of their own); source:
    the local address they connect from, one for all or one per kind."""
    sources = source if isinstance(source, Mapping) else dict.fromkeys(counts, source)
    abusers = [Abuse(port, context, kind, n, sources[kind]) for kind, n in counts.items() if n]
    for a in abusers:
        a.start()
    try:
        yield abusers
    finally:
        for a in abusers:
            await a.stop()


def _abuse_main(
    port: int,
    ca_pem: bytes,
    counts: dict[Kind, int],
    source: str | Mapping[Kind, str],
    stop: Event,
    opened: Any,
    closed: Any,
) -> None:
    async def run() -> None:
        context = ssl.create_default_context(cadata=ca_pem.decode())
        async with abusing(port, context, counts, source) as abusers:
            while not stop.is_set():
                await asyncio.sleep(0.1)
                for a in abusers:
                    i = KINDS.index(a.kind)
                    opened[i], closed[i] = a.opened, a.closed

    asyncio.run(run())


class AbuserProcess:
    """The abusers in a child process; `opened(kind)` / `closed(kind)` as it runs (every 0.1 s)."""

    def __init__(
        self,
        port: int,
        ca_pem: bytes,
        counts: Mapping[Kind, int],
        *,
        source: str | Mapping[Kind, str] = "127.0.0.2",
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._opened: SynchronizedArray[int] = ctx.Array("i", len(KINDS))
        self._closed: SynchronizedArray[int] = ctx.Array("i", len(KINDS))
        self.counts = dict(counts)
        self._process = ctx.Process(
            target=_abuse_main,
            args=(
                port,
                ca_pem,
                self.counts,
                source if isinstance(source, str) else dict(source),
                self._stop,
                self._opened,
                self._closed,
            ),
            daemon=True,
        )

    def opened(self, kind: Kind) -> int:
        return int(self._opened[KINDS.index(kind)])

    def closed(self, kind: Kind) -> int:
        return int(self._closed[KINDS.index(kind)])

    def __enter__(self) -> Self:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(15)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


@dataclass
class Latencies:
    ok: list[float] = field(default_factory=list)  # seconds, answered 200
    failed: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        values = sorted(self.ok)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q / 100 * len(values)))]


async def good_client(
    url: str,
    context: ssl.SSLContext,
    body: Callable[[int], bytes],
    *,
    duration: float,
    concurrency: int = 2,
    check: Callable[[bytes], bool] | None = None,
) -> Latencies:
    """Keep-alive HTTPS POSTs of body(i) for `duration` seconds, as the apiserver sends reviews."""
    out = Latencies()
    deadline = time.monotonic() + duration
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                i = next(counter)
                start = time.perf_counter()
                try:
                    async with session.post(
                        url, data=body(i), headers={"Content-Type": "application/json"}
                    ) as r:
                        data = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as e:
                    out.failed.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - start
                if status == 200 and (check is None or check(data)):
                    out.ok.append(elapsed)
                else:
                    out.failed.append(f"HTTP {status}: {data[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out
