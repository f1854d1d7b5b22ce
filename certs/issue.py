"""A CA and the webhook's serving certificate, made with `cryptography` (ECDSA P-256).

The apiserver verifies the webhook against the `caBundle` and the Service's DNS name: it dials
`SERVICE.NAMESPACE.svc`, so every form of the name goes in the SANs (kopf's issue #785 was a
certificate with `.svc.cluster.local` only).

Everything here is pure except `write_files` and `generate_files` (through dsguard.atomic_files);
the time of issue is a parameter (`now`) so that planners and tests can run on a fake clock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dsguard.atomic_files import write_private, write_public

CA_LIFETIME = dt.timedelta(days=5 * 365)
LEAF_LIFETIME = dt.timedelta(days=90)
# notBefore is backdated to tolerate clock skew between the issuer and the apiserver; the time of
# issue of one of our certificates is therefore notBefore + BACKDATE.
BACKDATE = dt.timedelta(minutes=5)
_BACKDATE = BACKDATE  # the name before it was public

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key. The repr never shows the key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return f"KeyPair({describe(self.cert)})"


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(
    common_name: str = "dsguard-ca", lifetime: dt.timedelta = CA_LIFETIME, *, now: dt.datetime | None = None
) -> KeyPair:
    """A self-signed CA (pathLen 0: it signs serving certificates only), valid from `now` for `lifetime`."""
    if lifetime <= dt.timedelta(0):
        raise ValueError(f"CA lifetime must be positive, got {lifetime}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def issue_serving(
    ca: KeyPair,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    lifetime: dt.timedelta = LEAF_LIFETIME,
    now: dt.datetime | None = None,
) -> KeyPair:
    """A serving certificate (serverAuth) signed by `ca`; it never outlives the CA."""
    if not dns_names and not ip_addresses:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    if lifetime <= dt.timedelta(0):
        raise ValueError(f"certificate lifetime must be positive, got {lifetime}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cn = dns_names[0] if dns_names else ip_addresses[0]
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


# --- reading and inspecting ------------------------------------------------------------------------


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; ValueError if there is none or one is malformed."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("no PEM certificate found")
    return x509.load_pem_x509_certificates(pem)


def load_key_pair(cert_pem: bytes, key_pem: bytes) -> KeyPair:
    """The first certificate of `cert_pem` with its ECDSA key; ValueError naming what is wrong.

    The messages never include key material.
    """
    cert = load_certificates(cert_pem)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("the private key is not an unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"the private key is {type(key).__name__}, not ECDSA")
    if not key_matches(cert, key.public_key()):
        raise ValueError(f"the private key does not belong to the certificate ({describe(cert)})")
    return KeyPair(cert, key)


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(cert: x509.Certificate, public_key: PublicKeyTypes) -> bool:
    return _spki(cert.public_key()) == _spki(public_key)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """`issuer`'s key signed `cert` (and the names chain)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def subject_alt_names(cert: x509.Certificate) -> tuple[frozenset[str], frozenset[IPAddress]]:
    """The DNS names (lower case) and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    dns = frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName))
    ips = frozenset(
        a
        for a in san.get_values_for_type(x509.IPAddress)
        if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)
    )
    return dns, ips


def wanted_alt_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> tuple[frozenset[str], frozenset[IPAddress]]:
    return frozenset(n.lower() for n in dns_names), frozenset(ipaddress.ip_address(a) for a in ip_addresses)


def lifetime_of(cert: x509.Certificate) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def issued_at(cert: x509.Certificate) -> dt.datetime:
    """When one of our certificates was made (notBefore is backdated by BACKDATE)."""
    return cert.not_valid_before_utc + BACKDATE


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def describe(cert: x509.Certificate) -> str:
    """A one-line, log-safe description: subject CN, serial, SHA-256 prefix and expiry."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else cert.subject.rfc4514_string()
    cn_text = cn.decode(errors="replace") if isinstance(cn, bytes) else cn
    expiry = cert.not_valid_after_utc.isoformat(timespec="seconds")
    return f"CN={cn_text} serial={cert.serial_number:x} sha256={fingerprint(cert)} notAfter={expiry}"


# --- files -----------------------------------------------------------------------------------------


def write_files(
    directory: Path, ca: KeyPair, leaf: KeyPair, *, include_ca_key: bool = False
) -> dict[str, Path]:
    """ca.crt, tls.crt, tls.key (the names of a kubernetes.io/tls Secret plus the CA); keys 0600.

    With include_ca_key also ca.key (0600), so that more serving certificates can be issued later.
    Each file is replaced atomically; the key is written before its certificate, so a reader that
    sees the new tls.crt finds the new tls.key too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "ca.crt": directory / "ca.crt",
        "tls.crt": directory / "tls.crt",
        "tls.key": directory / "tls.key",
    }
    if include_ca_key:
        paths["ca.key"] = directory / "ca.key"
        write_private(paths["ca.key"], ca.key_pem)
    write_public(paths["ca.crt"], ca.cert_pem)
    write_private(paths["tls.key"], leaf.key_pem)
    write_public(paths["tls.crt"], leaf.cert_pem)
    return paths


class FilesExist(ValueError):
    """generate_files would replace these files (and wasn't told to)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__(f"{', '.join(map(str, paths))} already exist(s)")
        self.paths = tuple(paths)


@dataclass(frozen=True)
class Generated:
    ca: KeyPair
    leaf: KeyPair
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    paths: dict[str, Path]


def generate_files(
    directory: Path,
    *,
    service: str,
    namespace: str,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    ca_lifetime: dt.timedelta = CA_LIFETIME,
    leaf_lifetime: dt.timedelta = LEAF_LIFETIME,
    replace: bool = False,
    reuse_ca: bool = False,
) -> Generated:
    """A CA (or, with reuse_ca, the one in directory/ca.crt and ca.key) and a serving certificate
    for SERVICE.NAMESPACE in every form (service_dns_names) plus `dns` and `ips`, written with
    write_files (ca.key only when the CA is new).

    Raises FilesExist when files it would write exist and not `replace`; ValueError for a CA that
    can't be read or used, or a bad SAN; OSError when the directory can't be written.
    """
    names = service_dns_names(service, namespace)
    names += [d for d in dns if d not in names]
    targets = ["tls.crt", "tls.key"] if reuse_ca else ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    existing = [directory / n for n in targets if (directory / n).exists() or (directory / n).is_symlink()]
    if existing and not replace:
        raise FilesExist(existing)
    if reuse_ca:
        try:
            ca = load_key_pair((directory / "ca.crt").read_bytes(), (directory / "ca.key").read_bytes())
        except OSError as e:
            raise ValueError(f"{e.filename}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(f"{directory / 'ca.crt'} and ca.key: {e}") from None
    else:
        ca = new_ca(f"{service}.{namespace}-ca", ca_lifetime)
    leaf = issue_serving(ca, dns_names=names, ip_addresses=list(ips), lifetime=leaf_lifetime)
    paths = write_files(directory, ca, leaf, include_ca_key=not reuse_ca)
    return Generated(ca, leaf, tuple(names), tuple(ips), paths)
