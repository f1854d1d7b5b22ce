"""Helpers for tests of the `dsguard` commands: a kubeconfig for a given server, and a loopback
port nothing listens on (connections to it are refused at once)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def kubeconfig(server: str) -> str:
    """One cluster at `server` (TLS not verified), a token user, context `ctx` (namespace
    `from-context`), current."""
    return f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: ctx, context: {{cluster: c, user: u, namespace: from-context}}}}]
current-context: ctx
"""


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])
