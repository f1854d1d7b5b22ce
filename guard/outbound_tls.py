"""The TLS of the guard's outbound HTTPS (alert sinks, Prometheus health gates): the system's CA
bundle (or $SSL_CERT_FILE), plus the CA certificates of `--extra-ca-file`, so a sink behind a
private CA is trusted without giving up the public CAs the others need."""

from __future__ import annotations

import ssl
from pathlib import Path

PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
MAX_CA_FILE = 1 << 20  # a CA bundle is kilobytes; the whole system bundle is ~200 KiB


class ExtraCAError(ValueError):
    """--extra-ca-file can't be used; the message names the file and says why."""


FIX = f"give the private CA's certificates in PEM ({PEM_CERTIFICATE} blocks)"


def outbound_ssl_context(extra_ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying client context, TLS 1.2 at least, trusting the system's CAs and extra_ca_file's."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_ca_file:
        path = Path(extra_ca_file)
        try:
            ctx.load_verify_locations(cadata=_read_pem(path))
        except ssl.SSLError as e:
            raise ExtraCAError(f"{path}: not a readable PEM CA certificate ({e.reason or e})") from None
    return ctx


def _read_pem(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CA_FILE + 1)
    except OSError as e:
        raise ExtraCAError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_CA_FILE:
        raise ExtraCAError(f"{path}: over {MAX_CA_FILE >> 10} KiB, not a CA bundle")
    text = data.decode("ascii", "replace")
    if PEM_CERTIFICATE not in text:
        raise ExtraCAError(f"{path}: no PEM certificate in it")
    return text
