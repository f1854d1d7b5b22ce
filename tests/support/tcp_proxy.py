"""A TCP proxy the test controls, between one client (a guard) and the apiserver: a network
partition on demand.

    with TcpProxy(cluster.ports.apiserver) as proxy:
        kubeconfig = kubeconfig_through(proxy, cluster.kubeconfig, tmp_path / "kubeconfig")
        ...                 # the client talks to the apiserver through proxy.port
        proxy.blackhole()   # packets dropped: open connections go silent, new ones hang
        proxy.reset()       # connections reset, new ones reset at once
        proxy.restore()     # the cut connections are closed; new ones go through again
        proxy.silence_open()  # open connections go silent for good; new ones go through

TLS passes through untouched (the apiserver's certificate names 127.0.0.1), so the client's
kubeconfig only needs the proxy's port. asyncio in a thread of its own, so the tests stay
synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml

Mode = Literal["open", "blackhole", "reset"]
T = TypeVar("T")


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode: Mode = "open"
        self.accepted = 0  # connections accepted, whatever became of them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None
        self._silenced: set[asyncio.StreamWriter] = set()  # client sides whose bytes go nowhere

    # -- control (from the test's thread) ------------------------------------------------------
    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the TCP proxy did not start in 10s")
        return self

    def blackhole(self) -> None:
        """As a dropped network: nothing more is forwarded on open connections (they stay open,
        silent) and new connections are accepted but never reach the apiserver."""
        self._call(self._set("blackhole"))

    def reset(self) -> None:
        """Every open connection is reset, and every new one at once (as a refused port would)."""
        self._call(self._set("reset"))

    def restore(self) -> None:
        """Forward again. Connections cut meanwhile are closed: the client must reconnect."""
        self._call(self._set("open"))

    def silence_open(self) -> None:
        """The connections open now go silent for good, both ways, never closed (a peer gone
        without a FIN or RST, a dropped NAT entry); new connections go through."""
        self._call(self._silence_open())

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- the loop's side -----------------------------------------------------------------------
    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: Mode) -> None:
        assert self._flowing is not None
        was, self.mode = self.mode, mode
        if mode == "open":
            if was != "open":  # what was cut stays cut
                for w in list(self._writers):
                    _abort(w)
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == "reset":
            for w in list(self._writers):
                _abort(w)

    async def _silence_open(self) -> None:
        self._silenced.update(self._writers)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            _abort(w)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "reset":
            _abort(writer)
            return
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                await _until_closed(reader)  # held, never connected upstream
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, writer)
                )
            finally:
                self._writers.discard(up_writer)
                _abort(up_writer)
        finally:
            self._writers.discard(writer)
            self._silenced.discard(writer)
            _abort(writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # blackholed: the bytes go nowhere
                if client in self._silenced:
                    continue  # silenced: read and dropped, the connection held open
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        # one side ended: end the other's writing half too, as a real hop would
        if not writer.is_closing() and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), not a FIN: what a dropped connection looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def kubeconfig_through(proxy: TcpProxy, kubeconfig: Path, dest: Path) -> Path:
    """A copy of `kubeconfig` whose clusters' server is the proxy (https://127.0.0.1:PORT); mode 0600."""
    doc = yaml.safe_load(kubeconfig.read_text())
    for entry in doc.get("clusters") or []:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    dest.touch(mode=0o600)
    dest.write_text(yaml.safe_dump(doc))
    return dest
