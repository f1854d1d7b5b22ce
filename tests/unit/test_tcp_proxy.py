"""The fault tests' TCP proxy (tests/support/tcp_proxy.py) against an echo server: it forwards,
goes silent (blackhole), resets, and after restore forwards new connections while the cut ones
stay cut."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.tcp_proxy import TcpProxy, kubeconfig_through


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the proxy resets it: that is the point
            while data := self.request.recv(4096):
                self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = TcpProxy(server.server_address[1]).start()
    try:
        yield p
    finally:
        p.stop()
        server.shutdown()
        server.server_close()


def connect(p: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=5)


def echoes(s: socket.socket, data: bytes = b"ping") -> bool:
    s.sendall(data)
    return s.recv(4096) == data


def cut(s: socket.socket) -> bool:
    """The connection was reset or closed (what a client sees of a cut connection)."""
    try:
        s.sendall(b"x")
        return s.recv(4096) == b""
    except OSError:
        return True


def unanswered(s: socket.socket, data: bytes) -> None:
    """`data` sent on `s` gets neither an answer nor a close within 0.3 s."""
    s.settimeout(0.3)
    s.sendall(data)
    with pytest.raises(TimeoutError):
        s.recv(4096)


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as s:
        assert echoes(s)
        assert echoes(s, b"second")


def test_blackhole_goes_silent_and_restore_cuts_what_was_held(proxy: TcpProxy) -> None:
    with connect(proxy) as before:
        assert echoes(before)
        proxy.blackhole()
        unanswered(before, b"lost")
        with connect(proxy) as during:  # accepted, never answered
            unanswered(during, b"lost too")
            proxy.restore()
            during.settimeout(5)
            assert cut(during)
        before.settimeout(5)
        assert cut(before)
    with connect(proxy) as after:
        assert echoes(after)


def test_reset_cuts_open_and_new_connections(proxy: TcpProxy) -> None:
    with connect(proxy) as before:
        assert echoes(before)
        proxy.reset()
        assert cut(before)
    try:
        during = connect(proxy)
    except OSError:  # reset before connect() returned: as cut
        pass
    else:
        with during:
            assert cut(during)
    proxy.restore()
    with connect(proxy) as after:
        assert echoes(after)


def test_silence_open_holds_open_connections_silent_and_lets_new_ones_through(proxy: TcpProxy) -> None:
    with connect(proxy) as before:
        assert echoes(before)
        proxy.silence_open()
        unanswered(before, b"lost")
        with connect(proxy) as after:
            assert echoes(after)
        with pytest.raises(TimeoutError):
            before.recv(4096)


def test_kubeconfig_through_points_every_cluster_at_the_proxy(proxy: TcpProxy, tmp_path: Path) -> None:
    original = tmp_path / "kubeconfig"
    original.write_text(
        yaml.safe_dump({"clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "x": 1}}]})
    )
    copy = kubeconfig_through(proxy, original, tmp_path / "via")
    doc = yaml.safe_load(copy.read_text())
    assert doc["clusters"][0]["cluster"] == {"server": f"https://127.0.0.1:{proxy.port}", "x": 1}
    assert copy.stat().st_mode & 0o077 == 0
