"""The webhook's server-side SSLContext, reloaded in place when the certificate files change.

Reloading the chain into the same SSLContext affects new handshakes only, so connections in
flight keep working (the apiserver reconnects on its own schedule). cert-manager and the
kubelet's Secret volume update both files atomically through a symlink swap; a digest of both
files decides whether anything changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import tempfile
from pathlib import Path

log = logging.getLogger("dsguard.certs")


def _digest(*paths: Path) -> bytes:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.digest()


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the apiserver's webhook client speaks HTTP/1.1 only
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


class CertReloader:
    def __init__(self, ctx: ssl.SSLContext, cert_file: str | Path, key_file: str | Path) -> None:
        self.ctx = ctx
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._digest = _digest(self.cert_file, self.key_file)
        self.reloads = 0

    def check(self) -> bool:
        """Reload if the files changed; a half-written pair fails to load and is retried next time."""
        try:
            digest = _digest(self.cert_file, self.key_file)
            if digest == self._digest:
                return False
            # Read both files once into a private copy, validate the pair in a scratch context, then
            # load the same bytes into the live one: a failed or torn load on the live context would
            # leave it holding a certificate without its key.
            with tempfile.TemporaryDirectory(prefix="dsguard-tls-") as tmp:
                cert_copy, key_copy = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                cert_copy.write_bytes(self.cert_file.read_bytes())
                key_copy.touch(mode=0o600)
                key_copy.write_bytes(self.key_file.read_bytes())
                digest = _digest(cert_copy, key_copy)
                server_context(cert_copy, key_copy)
                self.ctx.load_cert_chain(str(cert_copy), str(key_copy))
        except (OSError, ssl.SSLError) as e:
            log.warning("certificate reload failed, keeping the current one: %s", e)
            return False
        self._digest = digest
        self.reloads += 1
        log.info("reloaded the serving certificate from %s", self.cert_file)
        return True

    async def run(self, interval: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
