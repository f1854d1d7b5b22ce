"""CA bundles: the PEM list of CA certificates a client trusts, and the webhook configurations' caBundle.

The apiserver verifies a webhook's serving certificate against `clientConfig.caBundle` (base64 of a
PEM bundle, one per webhook in a Mutating/ValidatingWebhookConfiguration). During a CA rotation the
bundle holds the new and the old CA, so either's serving certificate verifies. Everything here is
pure: objects in, objects out.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.issue import is_ca, issued_by, load_certificates

MUTATING: Final = "MutatingWebhookConfiguration"
VALIDATING: Final = "ValidatingWebhookConfiguration"
WebhookKind = Literal["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
WEBHOOK_KINDS: tuple[WebhookKind, ...] = (MUTATING, VALIDATING)

# Set with every caBundle we write: the planner waits a propagation delay after it before it serves
# a certificate that only the new bundle verifies.
BUNDLE_UPDATED_ANNOTATION: Final = "certs.dsguard.io/ca-bundle-updated-at"

Bundle = tuple[x509.Certificate, ...]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def dedupe(certs: Iterable[x509.Certificate]) -> Bundle:
    """The certificates in order, each once."""
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for c in certs:
        der = _der(c)
        if der not in seen:
            seen.add(der)
            out.append(c)
    return tuple(out)


def pem_bundle(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in dedupe(certs))


def parse_bundle(pem: bytes) -> Bundle:
    """The certificates in a PEM bundle; () when it is empty or malformed (a bundle to replace)."""
    try:
        return tuple(load_certificates(pem))
    except ValueError:
        return ()


def ca_bundle_file(pem: bytes) -> Bundle:
    """The CA certificates of a file meant to become a caBundle (`dsguard certs inject`).

    ValueError when it holds a private key (which must never end up in a webhook configuration),
    or anything but PEM CA certificates.
    """
    if b"PRIVATE KEY" in pem:
        raise ValueError("the file holds a private key; give the CA certificate(s) only")
    bundle = parse_bundle(pem)
    if not bundle or not all(is_ca(c) for c in bundle):
        raise ValueError("expected PEM CA certificates")
    return bundle


def same_bundle(a: Sequence[x509.Certificate], b: Sequence[x509.Certificate]) -> bool:
    return [_der(c) for c in a] == [_der(c) for c in b]


def contains(bundle: Sequence[x509.Certificate], cert: x509.Certificate) -> bool:
    der = _der(cert)
    return any(_der(c) == der for c in bundle)


def issuers_in(bundle: Sequence[x509.Certificate], leaf: x509.Certificate) -> Bundle:
    """The CA certificates of `bundle` that signed `leaf`."""
    return tuple(c for c in bundle if is_ca(c) and issued_by(leaf, c))


def trusts(bundle: Sequence[x509.Certificate], leaf: x509.Certificate, now: dt.datetime) -> bool:
    """A client with `bundle` accepts `leaf` at `now`: an unexpired CA of the bundle signed it and
    the leaf itself is valid (the SANs are the client's business)."""
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        return False
    return any(c.not_valid_before_utc <= now < c.not_valid_after_utc for c in issuers_in(bundle, leaf))


# --- webhook configurations -----------------------------------------------------------------------


def _webhooks(config: Mapping[str, Any]) -> list[Any]:
    hooks = config.get("webhooks")
    return list(hooks) if isinstance(hooks, list) else []


def _decode(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def webhook_bundles(config: Mapping[str, Any]) -> list[tuple[str, Bundle]]:
    """Each webhook's name and the CA certificates of its caBundle (() when absent or malformed)."""
    out = []
    for hook in _webhooks(config):
        if not isinstance(hook, Mapping):
            continue
        client_config = hook.get("clientConfig")
        raw = client_config.get("caBundle") if isinstance(client_config, Mapping) else None
        out.append((str(hook.get("name", "")), parse_bundle(_decode(raw))))
    return out


def bundle_updated_at(config: Mapping[str, Any]) -> dt.datetime | None:
    """When we last wrote the caBundle (our annotation), or None if unknown or unreadable."""
    meta = config.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    value = annotations.get(BUNDLE_UPDATED_ANNOTATION) if isinstance(annotations, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def with_ca_bundle(config: Mapping[str, Any], pem: bytes, *, now: dt.datetime) -> dict[str, Any]:
    """A copy of the configuration with `pem` as every webhook's caBundle and the time of the change
    in our annotation. metadata.resourceVersion stays, so an update with it is conditional."""
    out = copy.deepcopy(dict(config))
    encoded = base64.b64encode(pem).decode()
    for hook in _webhooks(out):
        if isinstance(hook, dict):
            hook.setdefault("clientConfig", {})["caBundle"] = encoded
    meta = out.setdefault("metadata", {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    meta["annotations"] = {
        **(annotations if isinstance(annotations, Mapping) else {}),
        BUNDLE_UPDATED_ANNOTATION: now.astimezone(dt.UTC).isoformat(),
    }
    return out
