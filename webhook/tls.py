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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from dsguard.atomic_files import write_private

log = logging.getLogger("dsguard.certs")


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the apiserver's webhook client speaks HTTP/1.1 only
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


@dataclass(frozen=True)
class ServingFileError(Exception):
    """A serving certificate or key file the webhook can't start with: which file, what is wrong
    with it and how to fix it (OpenSSL's own error names neither the file nor the fix)."""

    which: Literal["cert", "key"]
    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; fix: {self.fix}"


_A_PAIR = "`dsguard certs generate` writes a matching tls.crt and tls.key"
_FIX_CERT = f"give the serving certificate (chain) in PEM; {_A_PAIR}"
_FIX_KEY = f"give the certificate's private key in PEM; {_A_PAIR}"
_FIX_ENCRYPTED = "decrypt it (`openssl pkey -in KEY -out tls.key`): the webhook reads keys unencrypted"
_FIX_MISMATCH = f"give the key and certificate of one pair (the same Secret's tls.crt and tls.key); {_A_PAIR}"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def checked_server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """server_context, after checking the files one by one so that a bad one is named: raises
    ServingFileError for an unreadable file, a certificate or key that isn't PEM (or is the other
    one), an encrypted key, or a key that doesn't belong to the certificate."""
    paths = {"cert": str(cert_file), "key": str(key_file)}

    def fail(which: Literal["cert", "key"], problem: str, fix: str) -> ServingFileError:
        return ServingFileError(which, paths[which], problem, fix)

    def read(which: Literal["cert", "key"]) -> bytes:
        try:
            return Path(paths[which]).read_bytes()
        except OSError as e:
            raise fail(
                which, f"cannot read it ({e.strerror or e})", "check the path and its permissions"
            ) from None

    cert_pem, key_pem = read("cert"), read("key")
    has_cert, has_key = b"-----BEGIN CERTIFICATE-----", b"PRIVATE KEY-----"
    if has_cert not in cert_pem:
        what = "it holds a private key" if has_key in cert_pem else "no -----BEGIN CERTIFICATE----- block"
        raise fail("cert", f"not a PEM certificate ({what})", _FIX_CERT)
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as e:
        raise fail("cert", f"not a PEM certificate ({_one_line(e)})", _FIX_CERT) from None
    if has_key not in key_pem:
        what = "it holds a certificate" if has_cert in key_pem else "no -----BEGIN PRIVATE KEY----- block"
        raise fail("key", f"not a PEM private key ({what})", _FIX_KEY)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # a password is needed
        raise fail("key", "the private key is encrypted", _FIX_ENCRYPTED) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise fail("key", f"not a PEM private key ({_one_line(e)})", _FIX_KEY) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        subject = leaf.subject.rfc4514_string() or "no subject"
        problem = f"not the private key of the certificate in {paths['cert']} ({subject})"
        raise fail("key", problem, _FIX_MISMATCH)
    try:
        return server_context(paths["cert"], paths["key"])
    except ssl.SSLError as e:  # e.g. an algorithm this OpenSSL refuses
        raise fail("cert", f"OpenSSL refused the pair ({e.reason or _one_line(e)})", _FIX_CERT) from None


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
