"""The webhook's server-side SSLContext, reloaded in place when the certificate files change.

Reloading the chain into the same SSLContext affects new handshakes only: a connection takes its
certificate from the context when it is made, so connections and requests in flight carry on
undisturbed (the apiserver reconnects on its own schedule). The kubelet updates a Secret volume
atomically through a symlink swap; other writers (cp, an editor) replace the files one at a time.
Either way the reloader reads both files once, checks that the pair belongs together in a scratch
context, and only then loads the very same bytes into the live context: a torn pair (a new
certificate with the old key) is skipped and retried at the next check, never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dsguard.atomic_files import write_private

log = logging.getLogger("dsguard.certs")


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the apiserver's webhook client speaks HTTP/1.1 only
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def _digest(cert: bytes, key: bytes) -> bytes:
    h = hashlib.sha256()
    for part in (cert, key):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


@contextlib.contextmanager
def _memfd_files(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """The bytes as anonymous in-memory files (Linux): no disk, no writable directory needed."""
    fds: list[int] = []
    try:
        for name, data in (("dsguard-tls-crt", cert), ("dsguard-tls-key", key)):
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def _temp_files(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """The bytes as files in a private (0700) temporary directory, the key 0600; removed after."""
    with tempfile.TemporaryDirectory(prefix="dsguard-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert_path.write_bytes(cert)
        write_private(key_path, key)
        yield str(cert_path), str(key_path)


def _use_memfd() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


@contextlib.contextmanager
def as_files(cert: bytes, key: bytes, *, memfd: bool | None = None) -> Iterator[tuple[str, str]]:
    """Paths that OpenSSL can load `cert` and `key` from, for the duration of the block."""
    with (_memfd_files if (_use_memfd() if memfd is None else memfd) else _temp_files)(cert, key) as paths:
        yield paths


class CertReloader:
    """Reloads `ctx` from the certificate and key files when their content changes."""

    def __init__(
        self, ctx: ssl.SSLContext, cert_file: str | Path, key_file: str | Path, *, memfd: bool | None = None
    ) -> None:
        self.ctx = ctx
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._memfd = memfd
        self.cert_pem = self.cert_file.read_bytes()
        self._digest = _digest(self.cert_pem, self.key_file.read_bytes())
        self._failed: bytes | None = None  # the content that last failed to load: warn once for it
        self.reloads = 0

    def check(self) -> bool:
        """Reload if the files changed and hold a matching pair; True if it did."""
        try:
            cert, key = self.cert_file.read_bytes(), self.key_file.read_bytes()
        except OSError as e:
            log.warning("cannot read the serving certificate, keeping the current one: %s", e)
            return False
        digest = _digest(cert, key)
        if digest == self._digest:
            return False
        try:
            with as_files(cert, key, memfd=self._memfd) as (cert_path, key_path):
                # A failed or torn load into the live context could leave it holding a certificate
                # without its key: validate the pair in a scratch context first.
                server_context(cert_path, key_path)
                self.ctx.load_cert_chain(cert_path, key_path)
        except (OSError, ssl.SSLError, ValueError) as e:
            if digest != self._failed:  # a writer between its two files: usually fixed by the next check
                log.warning("not reloading the serving certificate (yet), keeping the current one: %s", e)
            self._failed = digest
            return False
        self._digest = digest
        self._failed = None
        self.cert_pem = cert
        self.reloads += 1
        log.info("reloaded the serving certificate from %s", self.cert_file)
        return True

    async def run(self, interval: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
