"""Throwaway TLS material for tests, made by the product's own certs.issue.

Serving certificates carry SANs for 127.0.0.1 and localhost by default; pass `hosts` for others
(IP addresses become IP SANs, anything else a DNS SAN). Short lifetimes: these never outlive a run.
Also SecretVolume (a directory laid out like the kubelet's Secret volume) and AheadClock (a clock
for issuing certificates that are valid at once).
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs.issue import BACKDATE, KeyPair, issue_serving, new_ca
from certs.rotate import secret_data
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


class SecretVolume:
    """A directory laid out like the kubelet's Secret volume: each file is a symlink into `..data`,
    a symlink to a timestamped directory that is swapped by one atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._versions = itertools.count()

    def path(self, name: str) -> Path:
        return self.root / name

    def update(self, files: Mapping[str, bytes]) -> None:
        version = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{next(self._versions)}"
        version.mkdir(mode=0o700)
        for name, data in files.items():
            write_private_atomic(version / name, data)  # 0600 for all: keys among them
        data_link = self.root / "..data"
        old = data_link.resolve() if data_link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, data_link)
        for name in files:
            if not self.path(name).is_symlink():
                self.path(name).symlink_to(Path("..data") / name)
        if old is not None:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def update_from_secret(self, secret: Mapping[str, Any]) -> None:
        self.update({k: secret_data(secret, k) or b"" for k in ("tls.crt", "tls.key", "ca.crt")})


class AheadClock:
    """Real time plus an offset that only grows, never by BACKDATE or more: certificates issued on it
    are already valid (notBefore = issue - BACKDATE) for a TLS client on the real clock."""

    def __init__(self) -> None:
        self.start = datetime.datetime.now(datetime.UTC)

    def at(self, offset: datetime.timedelta) -> datetime.datetime:
        assert offset < BACKDATE - datetime.timedelta(seconds=10), (
            "certificates issued then would not be valid yet"
        )
        return self.start + offset
