"""Certificates and keys for the local control plane (generated with ``cryptography``).

One self-signed CA signs everything: the kube-apiserver serving certificate, serving
certificates for kube-controller-manager and kube-scheduler (so their /healthz can be checked
with verification on), and client certificates for the admin (O=system:masters) and the two
controllers. The service-account token signing key pair is separate (it is not a certificate).
Keys are ECDSA P-256: quick to generate and accepted by every component. Private keys are
written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "APISERVER_DNS_SANS",
    "CertPair",
    "Pki",
    "generate_pki",
    "issue_from_ca",
    "write_private_key",
]

APISERVER_DNS_SANS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

#: Client identities: file stem -> (CN, O or None).
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("kubernetes-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
    # The apiserver's identity towards kubelets (`kubectl logs/exec`); the kubelet's webhook
    # authorizer asks the apiserver, which lets system:masters do anything.
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}

_VALIDITY = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock differences


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of everything generate_pki wrote."""

    dir: Path
    ca: CertPair
    apiserver: CertPair
    sa_key: Path
    sa_pub: Path
    #: serving certs for kube-controller-manager and kube-scheduler (SANs 127.0.0.1, localhost)
    serving: dict[str, CertPair] = field(default_factory=dict)
    #: client certs: "admin", "kube-controller-manager", "kube-scheduler"
    clients: dict[str, CertPair] = field(default_factory=dict)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM private key that only the owner can read (created 0600, never wider)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name(cn)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    cn: str,
    org: str | None = None,
    server: bool = False,
    client: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        _builder(_name(cn, org), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _save(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    _write_cert(pair.cert, cert)
    write_private_key(pair.key, key)
    return pair


def issue_from_ca(
    pki: Pki,
    stem: str,
    *,
    cn: str,
    org: str | None = None,
    server: bool = False,
    client: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> CertPair:
    """Issue one more certificate from the CA of an existing Pki into its directory (e.g. a real
    node's client and serving certificates, made when the node starts)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca.key}: not an ECDSA key")
    cert, key = _issue(ca_cert, ca_key, cn=cn, org=org, server=server, client=client, dns=dns, ips=ips)
    return _save(pki.dir, stem, cert, key)


def generate_pki(directory: Path, *, service_ip: str = "10.96.0.1", extra_sans: Sequence[str] = ()) -> Pki:
    """Generate a fresh CA and every certificate and key the control plane needs into directory.

    service_ip is the first IP of the service CIDR (the ``kubernetes`` Service's ClusterIP),
    which the apiserver serving certificate must name. extra_sans are added to it too (an
    entry that parses as an IP becomes an IP SAN, anything else a DNS SAN).
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_cert, ca_key = _make_ca("dsguard-local-ca")
    ca = _save(directory, "ca", ca_cert, ca_key)

    ips = ["127.0.0.1", service_ip]
    dns = list(APISERVER_DNS_SANS)
    for san in extra_sans:
        try:
            ipaddress.ip_address(san)
        except ValueError:
            dns.append(san)
        else:
            ips.append(san)
    cert, key = _issue(ca_cert, ca_key, cn="kube-apiserver", server=True, dns=dns, ips=ips)
    apiserver = _save(directory, "apiserver", cert, key)

    serving: dict[str, CertPair] = {}
    for component in ("kube-controller-manager", "kube-scheduler"):
        cert, key = _issue(
            ca_cert, ca_key, cn=component, server=True, dns=["localhost", component], ips=["127.0.0.1"]
        )
        serving[component] = _save(directory, f"{component}-serving", cert, key)

    clients: dict[str, CertPair] = {}
    for stem, (cn, org) in CLIENTS.items():
        cert, key = _issue(ca_cert, ca_key, cn=cn, org=org, client=True)
        clients[stem] = _save(directory, stem, cert, key)

    sa_private = _new_key()
    sa_key = directory / "sa.key"
    sa_pub = directory / "sa.pub"
    write_private_key(sa_key, sa_private)
    sa_pub.write_bytes(
        sa_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        dir=directory,
        ca=ca,
        apiserver=apiserver,
        sa_key=sa_key,
        sa_pub=sa_pub,
        serving=serving,
        clients=clients,
    )
