"""Throwaway TLS material for tests and benchmarks: a CA and serving certificates it signs.

ECDSA P-256 throughout. Serving certificates carry SANs for 127.0.0.1 and localhost by default;
pass `hosts` for others (IP addresses become IP SANs, anything else a DNS SAN).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_VALIDITY = datetime.timedelta(days=1)
_SKEW = datetime.timedelta(minutes=5)  # backdate notBefore so a slightly-off clock still accepts it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class ServingCert:
    cert_pem: bytes
    key_pem: bytes
    serial: int


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "dsguard test CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, hosts: Sequence[str] = DEFAULT_HOSTS) -> ServingCert:
        """A serving certificate (serverAuth) for `hosts`, with a fresh key and serial."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0] if hosts else "dsguard"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return ServingCert(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key), serial=serial
        )


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
    """Write `data` to `path` with mode 0600 (also when the file already existed)."""
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
    write_private(directory / "ca.key", _key_pem(ca.key))
    write_serving(cert_file, key_file, serving)
    return TLSFiles(ca=ca, ca_file=ca_file, cert_file=cert_file, key_file=key_file, serial=serving.serial)
