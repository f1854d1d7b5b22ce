"""Throwaway TLS material for tests and benchmarks, made by the product's own certs.issue.

Serving certificates carry SANs for 127.0.0.1 and localhost by default; pass `hosts` for others
(IP addresses become IP SANs, anything else a DNS SAN). Short lifetimes: these never outlive a run.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from certs.issue import KeyPair, issue_serving, new_ca
from dsguard.atomic_files import write_private as write_private_atomic

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_VALIDITY = datetime.timedelta(days=1)


def _split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    ips: list[str] = []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            ips.append(h)
        except ValueError:
            dns.append(h)
    return dns, ips


@dataclass(frozen=True)
class ServingCert:
    cert_pem: bytes
    key_pem: bytes
    serial: int


@dataclass(frozen=True)
class CertificateAuthority:
    pair: KeyPair

    @classmethod
    def create(cls, common_name: str = "dsguard test CA") -> CertificateAuthority:
        return cls(new_ca(common_name, _VALIDITY))

    @property
    def pem(self) -> bytes:
        return self.pair.cert_pem

    def issue(self, hosts: Sequence[str] = DEFAULT_HOSTS) -> ServingCert:
        """A serving certificate for `hosts`, with a fresh key and serial."""
        dns, ips = _split_hosts(hosts)
        leaf = issue_serving(self.pair, dns_names=dns, ip_addresses=ips, lifetime=_VALIDITY)
        return ServingCert(cert_pem=leaf.cert_pem, key_pem=leaf.key_pem, serial=leaf.cert.serial_number)


@dataclass(frozen=True)
class TLSFiles:
    ca: CertificateAuthority
    ca_file: Path
    cert_file: Path
    key_file: Path
    serial: int  # of the serving certificate in cert_file

    @property
    def ca_pem(self) -> bytes:
        return self.ca.pem


def write_private(path: Path, data: bytes) -> None:
    """Overwrite `path` IN PLACE with mode 0600. Unlike dsguard.atomic_files.write_private (atomic rename),
    this is how a plain copy lands, so reload tests can observe half-written files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_serving(cert_file: Path, key_file: Path, serving: ServingCert) -> None:
    """Overwrite a certificate/key pair in place (the certificate first, like a non-atomic copy)."""
    cert_file.write_bytes(serving.cert_pem)
    write_private(key_file, serving.key_pem)


def write_tls_files(
    directory: Path, *, ca: CertificateAuthority | None = None, hosts: Sequence[str] = DEFAULT_HOSTS
) -> TLSFiles:
    """ca.crt, tls.crt and tls.key (0600; also ca.key) in `directory`, created if missing."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or CertificateAuthority.create()
    serving = ca.issue(hosts)
    ca_file, cert_file, key_file = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    ca_file.write_bytes(ca.pem)
    write_private_atomic(directory / "ca.key", ca.pair.key_pem)
    write_serving(cert_file, key_file, serving)
    return TLSFiles(ca=ca, ca_file=ca_file, cert_file=cert_file, key_file=key_file, serial=serving.serial)
