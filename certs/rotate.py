"""The webhook's certificate lifecycle as a pure plan: observed objects and a clock in, writes out.

Three kinds of object take part:

* the CA Secret (type Opaque): ``ca.crt`` and ``ca.key``, plus ``previous-ca.crt`` during a CA
  rotation. The CA key lives here only.
* the serving Secret (type kubernetes.io/tls): ``tls.crt``, ``tls.key`` and ``ca.crt``, the CA
  bundle clients should trust. The webhook pods mount it.
* the Mutating/ValidatingWebhookConfigurations: every webhook's ``clientConfig.caBundle``.

`plan` looks at them and at the time and returns the writes that move them one step on, in the
order they must happen. Every step is idempotent: planning again on the result plans nothing new.

* No usable CA: make one. The serving certificate and the bundle follow in the same round.
* The CA has less than a third of the CA lifetime left: make a new CA and keep the old one as
  ``previous-ca.crt``; the bundle becomes new + old and is written to every webhook FIRST. The
  serving certificate is re-issued by the new CA only once every webhook's caBundle has held the
  new CA for ``propagation_delay`` (a later round). The old CA leaves the bundle when the serving
  certificate by the new CA has been in the Secret for ``grace`` (longer than the kubelet takes to
  update a Secret volume, so no pod still serves the old certificate), or when it has expired.
* The serving certificate is re-issued when it is missing or broken, has less than a third of the
  leaf lifetime left, names other SANs than wanted, or was not signed by the current CA.
* A CA Secret that is missing while a working serving certificate exists starts a rotation too:
  the CA that signed that certificate stays in the bundle until the new certificate is out.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from certs.bundle import (
    MUTATING,
    VALIDATING,
    WEBHOOK_KINDS,
    Bundle,
    WebhookKind,
    bundle_updated_at,
    contains,
    dedupe,
    issuers_in,
    parse_bundle,
    pem_bundle,
    same_bundle,
    webhook_bundles,
    with_ca_bundle,
)
from certs.issue import (
    CA_LIFETIME,
    LEAF_LIFETIME,
    KeyPair,
    describe,
    fingerprint,
    is_ca,
    issue_serving,
    issued_at,
    issued_by,
    key_matches,
    load_key_pair,
    new_ca,
    service_dns_names,
    subject_alt_names,
    wanted_alt_names,
)

Obj = dict[str, Any]

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
PREVIOUS_CA: Final = "previous-ca.crt"
TLS_CERT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"
CA_SECRET_TYPE: Final = "Opaque"  # noqa: S105 - a Secret type, not a password
TLS_SECRET_TYPE: Final = "kubernetes.io/tls"  # noqa: S105
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "dsguard-certs"}

RENEW_DIVISOR: Final = 3  # renew when less than a third of the lifetime is left
RETRY_AFTER_ERROR: Final = dt.timedelta(seconds=30)
DEFAULT_PROPAGATION_DELAY: Final = dt.timedelta(seconds=30)
DEFAULT_GRACE: Final = dt.timedelta(minutes=5)
_NEVER: Final = dt.datetime.max.replace(tzinfo=dt.UTC)

_KIND_ALIASES: Final[dict[str, WebhookKind]] = {
    "mutating": MUTATING,
    "mutatingwebhookconfiguration": MUTATING,
    "validating": VALIDATING,
    "validatingwebhookconfiguration": VALIDATING,
}


@dataclass(frozen=True)
class ConfigRef:
    """A webhook configuration to inject the bundle into: `NAME` (either kind, or both if both
    exist), `mutating/NAME` or `validating/NAME`."""

    name: str
    kinds: tuple[WebhookKind, ...] = WEBHOOK_KINDS

    @classmethod
    def parse(cls, text: str) -> ConfigRef:
        prefix, sep, name = text.partition("/")
        if not sep:
            name, kinds = text, WEBHOOK_KINDS
        else:
            kind = _KIND_ALIASES.get(prefix.lower())
            if kind is None:
                raise ValueError(f"{text!r}: expected NAME, mutating/NAME or validating/NAME")
            kinds = (kind,)
        if not name or "/" in name:
            raise ValueError(f"{text!r}: expected NAME, mutating/NAME or validating/NAME")
        return cls(name, kinds)

    def __str__(self) -> str:
        if self.kinds == WEBHOOK_KINDS:
            return self.name
        return f"{self.kinds[0]}/{self.name}"


@dataclass(frozen=True)
class Settings:
    namespace: str
    service: str
    secret: str = "dsguard-webhook-tls"  # noqa: S105 - Secret names
    ca_secret: str = "dsguard-webhook-ca"  # noqa: S105
    webhook_configurations: tuple[ConfigRef, ...] = ()
    extra_dns: tuple[str, ...] = ()
    extra_ips: tuple[str, ...] = ()
    ca_lifetime: dt.timedelta = CA_LIFETIME
    leaf_lifetime: dt.timedelta = LEAF_LIFETIME
    propagation_delay: dt.timedelta = DEFAULT_PROPAGATION_DELAY
    grace: dt.timedelta = DEFAULT_GRACE
    ca_common_name: str = "dsguard-webhook-ca"

    @property
    def dns_names(self) -> list[str]:
        names = service_dns_names(self.service, self.namespace)
        return names + [n for n in self.extra_dns if n not in names]

    @property
    def ip_addresses(self) -> list[str]:
        return list(dict.fromkeys(str(ipaddress.ip_address(a)) for a in self.extra_ips))

    def problems(self) -> list[str]:
        out = []
        for what, value in (
            ("CA lifetime", self.ca_lifetime),
            ("leaf lifetime", self.leaf_lifetime),
        ):
            if value <= dt.timedelta(0):
                out.append(f"the {what} must be positive, got {value}")
        if self.leaf_lifetime > self.ca_lifetime / RENEW_DIVISOR:
            out.append(
                f"the leaf lifetime ({self.leaf_lifetime}) must be at most a third of the CA lifetime "
                f"({self.ca_lifetime}): the CA is rotated when a third of its lifetime is left, and a "
                "serving certificate never outlives its CA"
            )
        if self.propagation_delay < dt.timedelta(0) or self.grace < dt.timedelta(0):
            out.append("the propagation delay and the grace period cannot be negative")
        for a in self.extra_ips:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                out.append(f"{a!r} is not an IP address")
        if self.secret == self.ca_secret:
            out.append("the serving Secret and the CA Secret must differ (the CA key stays in its own)")
        return out


@dataclass(frozen=True)
class Observed:
    """What the planner looks at: the two Secrets (None when missing) and every webhook
    configuration looked up, by (kind, name) (None when missing)."""

    ca_secret: Obj | None
    tls_secret: Obj | None
    configs: Mapping[tuple[WebhookKind, str], Obj | None]


@dataclass(frozen=True)
class Write:
    """Create (no resourceVersion) or update (conditional on the body's resourceVersion) one object.

    The body may hold key material: it is left out of the repr, and `reason` never includes it.
    """

    kind: str
    name: str
    namespace: str | None
    create: bool
    reason: str
    body: Obj = field(repr=False)

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{'create' if self.create else 'update'} {self.kind} {where}: {self.reason}"


@dataclass
class Plan:
    writes: list[Write] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why something waits; the state in brief
    next_check: dt.datetime = _NEVER  # look again by then


# --- reading the Secrets ---------------------------------------------------------------------------


def secret_data(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    if secret is None:
        return None
    data = secret.get("data")
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


@dataclass(frozen=True)
class _CAState:
    pair: KeyPair | None  # usable: a CA, its key, unexpired
    cert: x509.Certificate | None  # ca.crt when it parses, usable or not
    previous: Bundle
    problem: str


def _read_ca(secret: Obj | None, now: dt.datetime) -> _CAState:
    previous = parse_bundle(secret_data(secret, PREVIOUS_CA) or b"")
    if secret is None:
        return _CAState(None, None, (), "no CA yet")
    cert_pem, key_pem = secret_data(secret, CA_CERT), secret_data(secret, CA_KEY)
    if not cert_pem:
        return _CAState(None, None, previous, f"the CA Secret has no {CA_CERT}")
    certs = parse_bundle(cert_pem)
    cert = certs[0] if certs else None
    if cert is None:
        return _CAState(None, None, previous, f"{CA_CERT} is not a PEM certificate")
    if not key_pem:
        return _CAState(None, cert, previous, f"the CA Secret has no {CA_KEY}")
    try:
        pair = load_key_pair(cert_pem, key_pem)
    except ValueError as e:
        return _CAState(None, cert, previous, f"the CA key pair is unusable: {e}")
    if not is_ca(cert):
        return _CAState(None, cert, previous, f"{CA_CERT} is not a CA certificate ({describe(cert)})")
    if not _valid_at(cert, now):
        return _CAState(None, cert, previous, f"the CA is not valid now ({describe(cert)})")
    return _CAState(pair, cert, previous, "")


@dataclass(frozen=True)
class _LeafState:
    cert: x509.Certificate | None
    usable: bool  # parses, its key matches, valid now: it may well be what the webhook serves
    problem: str  # why it is not usable
    bundle: Bundle  # the Secret's ca.crt


def _read_leaf(secret: Obj | None, now: dt.datetime) -> _LeafState:
    if secret is None:
        return _LeafState(None, False, "no serving certificate yet", ())
    bundle = parse_bundle(secret_data(secret, CA_CERT) or b"")
    certs = parse_bundle(secret_data(secret, TLS_CERT) or b"")
    if not certs:
        return _LeafState(None, False, f"the serving Secret has no PEM certificate in {TLS_CERT}", bundle)
    cert = certs[0]
    try:
        key = serialization.load_pem_private_key(secret_data(secret, TLS_KEY) or b"", password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return _LeafState(cert, False, f"{TLS_KEY} is missing or not an unencrypted PEM key", bundle)
    if not key_matches(cert, key.public_key()):
        return _LeafState(cert, False, f"{TLS_KEY} does not belong to {TLS_CERT}", bundle)
    if not _valid_at(cert, now):
        return _LeafState(cert, False, f"the serving certificate is not valid now ({describe(cert)})", bundle)
    return _LeafState(cert, True, "", bundle)


def _secret_body(
    observed: Obj | None, *, namespace: str, name: str, type_: str, data: Mapping[str, bytes | None]
) -> Obj:
    """The Secret to write: the observed one (labels, other keys, resourceVersion kept) with `data`
    set (None: removed), or a new one."""
    if observed is None:
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "type": type_,
            "data": {},
        }
    else:
        body = copy.deepcopy(observed)
        body["metadata"].pop("managedFields", None)
        if not isinstance(body.get("data"), dict):
            body["data"] = {}
    for key, value in data.items():
        if value is None:
            body["data"].pop(key, None)
        else:
            body["data"][key] = base64.b64encode(value).decode()
    return body


def _secret_problem(secret: Obj | None, want_type: str, what: str, settings: Settings) -> str | None:
    if secret is None:
        return None
    name = f"{settings.namespace}/{secret.get('metadata', {}).get('name', '?')}"
    got = secret.get("type") or "Opaque"
    if got != want_type:
        return (
            f"the {what} Secret {name} has type {got}, not {want_type}; a Secret's type cannot change: "
            "delete it (dsguard certs run recreates it) or name another one"
        )
    if secret.get("immutable") is True:
        return f"the {what} Secret {name} is immutable; delete it (dsguard certs run recreates it)"
    return None


# --- the plan --------------------------------------------------------------------------------------


def config_lookups(settings: Settings) -> list[tuple[WebhookKind, str]]:
    """Every (kind, name) to read for `Observed.configs`."""
    return list(dict.fromkeys((k, ref.name) for ref in settings.webhook_configurations for k in ref.kinds))


def missing_config_message(ref: ConfigRef) -> str:
    kinds = " or ".join(ref.kinds)
    return (
        f'{kinds} "{ref.name}" not found: dsguard certs only injects the caBundle into webhook '
        "configurations that exist; they are created by the dsguard install manifests "
        "(kubectl apply) — install those first, or fix --webhook-configuration"
    )


def plan(obs: Observed, settings: Settings, now: dt.datetime) -> Plan:
    """The writes that move the certificates one round on at `now`, in order (see the module doc)."""
    p = Plan()
    problems = [
        *settings.problems(),
        *(
            msg
            for msg in (
                _secret_problem(obs.ca_secret, CA_SECRET_TYPE, "CA", settings),
                _secret_problem(obs.tls_secret, TLS_SECRET_TYPE, "serving", settings),
            )
            if msg
        ),
    ]
    if problems:
        p.errors += problems
        p.next_check = now + RETRY_AFTER_ERROR
        return p
    checks: list[dt.datetime] = []
    found: list[tuple[WebhookKind, str, Obj]] = []
    for ref in settings.webhook_configurations:
        objs = [(k, ref.name, o) for k in ref.kinds if (o := obs.configs.get((k, ref.name))) is not None]
        if not objs:
            p.errors.append(missing_config_message(ref))
            checks.append(now + RETRY_AFTER_ERROR)
        found += [f for f in objs if f[:2] not in {g[:2] for g in found}]
    config_bundles = [b for _, _, obj in found for _, b in webhook_bundles(obj)]

    ca_state = _read_ca(obs.ca_secret, now)
    leaf = _read_leaf(obs.tls_secret, now)

    # 1. The CA: make one, or start a rotation.
    ca = ca_state.pair
    previous = [c for c in ca_state.previous if is_ca(c) and c.not_valid_after_utc > now]
    new_ca_reason = ""
    if ca is None:
        new_ca_reason = ca_state.problem
        # Whatever signed the serving certificate in use stays trusted until its successor is out.
        adopt = []
        if ca_state.cert is not None and is_ca(ca_state.cert) and _valid_at(ca_state.cert, now):
            adopt.append(ca_state.cert)
        if leaf.usable and leaf.cert is not None:
            for bundle in (leaf.bundle, *config_bundles):
                adopt += issuers_in(bundle, leaf.cert)
        previous = list(dedupe([*previous, *(c for c in adopt if _valid_at(c, now))]))
    elif ca.cert.not_valid_after_utc - now < settings.ca_lifetime / RENEW_DIVISOR:
        new_ca_reason = f"the CA has less than a third of the CA lifetime left ({describe(ca.cert)})"
        previous = list(dedupe([ca.cert, *previous]))
    if ca is None or new_ca_reason:
        ca = new_ca(settings.ca_common_name, settings.ca_lifetime, now=now)
        kept = f"; keeping {len(previous)} old CA(s) in the bundle until the switch" if previous else ""
        p.writes.append(
            Write(
                "Secret",
                settings.ca_secret,
                settings.namespace,
                create=obs.ca_secret is None,
                reason=f"new CA {describe(ca.cert)} ({new_ca_reason}){kept}",
                body=_secret_body(
                    obs.ca_secret,
                    namespace=settings.namespace,
                    name=settings.ca_secret,
                    type_=CA_SECRET_TYPE,
                    data={
                        CA_CERT: ca.cert_pem,
                        CA_KEY: ca.key_pem,
                        PREVIOUS_CA: pem_bundle(previous) if previous else None,
                    },
                ),
            )
        )
    else:
        # 2. Drop old CAs once the serving certificate by the current CA is out everywhere.
        previous = [c for c in previous if not contains([ca.cert], c)]
        drop_reason = ""
        if previous and leaf.usable and leaf.cert is not None and issued_by(leaf.cert, ca.cert):
            switch_done = issued_at(leaf.cert) + settings.grace
            if now >= switch_done:
                drop_reason = (
                    f"the serving certificate by the current CA has been in the Secret for {settings.grace}"
                )
                previous = []
            else:
                p.notes.append(
                    f"CA rotation: the old CA stays in the bundle until {switch_done.isoformat()} "
                    "(grace for the kubelet to update every pod's Secret volume)"
                )
                checks.append(switch_done)
        elif previous and not (leaf.usable and leaf.cert is not None and issued_by(leaf.cert, ca.cert)):
            p.notes.append("CA rotation: waiting for a serving certificate by the new CA")
        if not same_bundle(previous, ca_state.previous):
            p.writes.append(
                Write(
                    "Secret",
                    settings.ca_secret,
                    settings.namespace,
                    create=False,
                    reason=f"old CA(s) leave the bundle: {drop_reason or 'expired'}",
                    body=_secret_body(
                        obs.ca_secret,
                        namespace=settings.namespace,
                        name=settings.ca_secret,
                        type_=CA_SECRET_TYPE,
                        data={PREVIOUS_CA: pem_bundle(previous) if previous else None},
                    ),
                )
            )
    checks.append(ca.cert.not_valid_after_utc - settings.ca_lifetime / RENEW_DIVISOR)
    checks += [c.not_valid_after_utc for c in previous]
    bundle = dedupe([ca.cert, *previous])
    bundle_pem = pem_bundle(bundle)

    # 3. The bundle in every webhook.
    for kind, name, obj in found:
        if all(same_bundle(b, bundle) for _, b in webhook_bundles(obj)):
            continue
        p.writes.append(
            Write(
                kind,
                name,
                None,
                create=False,
                reason=f"caBundle := {_bundle_text(bundle)}",
                body=with_ca_bundle(obj, bundle_pem, now=now),
            )
        )

    # 4. The serving certificate, and the bundle in its Secret's ca.crt.
    renew = _renew_reasons(leaf, ca.cert, settings, now)
    new_leaf: KeyPair | None = None
    if renew:
        # A serving certificate by another CA than the one in use waits until every webhook has
        # trusted its CA for the propagation delay; a missing configuration can't be told at all.
        trusted_at = None if p.errors else _trusted_at(ca.cert, [o for _, _, o in found], settings)
        same_ca = leaf.cert is not None and issued_by(leaf.cert, ca.cert)
        why = "; ".join(renew)
        if not leaf.usable or same_ca or (trusted_at is not None and trusted_at <= now):
            new_leaf = issue_serving(
                ca,
                dns_names=settings.dns_names,
                ip_addresses=settings.ip_addresses,
                lifetime=settings.leaf_lifetime,
                now=now,
            )
        elif trusted_at is None:
            p.notes.append(
                f"the serving certificate needs renewal ({why}) but waits until every webhook's "
                "caBundle holds the new CA"
            )
            checks.append(now + (RETRY_AFTER_ERROR if p.errors else settings.propagation_delay))
        else:
            p.notes.append(
                f"the serving certificate needs renewal ({why}) but waits until "
                f"{trusted_at.isoformat()} for the apiservers to see the new caBundle"
            )
            checks.append(trusted_at)
    elif leaf.cert is not None:
        checks.append(leaf.cert.not_valid_after_utc - settings.leaf_lifetime / RENEW_DIVISOR)
    if new_leaf is not None:
        checks.append(new_leaf.cert.not_valid_after_utc - settings.leaf_lifetime / RENEW_DIVISOR)
        p.writes.append(
            Write(
                "Secret",
                settings.secret,
                settings.namespace,
                create=obs.tls_secret is None,
                reason=f"new serving certificate {describe(new_leaf.cert)} ({'; '.join(renew)})",
                body=_secret_body(
                    obs.tls_secret,
                    namespace=settings.namespace,
                    name=settings.secret,
                    type_=TLS_SECRET_TYPE,
                    data={TLS_CERT: new_leaf.cert_pem, TLS_KEY: new_leaf.key_pem, CA_CERT: bundle_pem},
                ),
            )
        )
    elif not same_bundle(leaf.bundle, bundle):
        p.writes.append(
            Write(
                "Secret",
                settings.secret,
                settings.namespace,
                create=False,
                reason=f"{CA_CERT} := {_bundle_text(bundle)}",
                body=_secret_body(
                    obs.tls_secret,
                    namespace=settings.namespace,
                    name=settings.secret,
                    type_=TLS_SECRET_TYPE,
                    data={CA_CERT: bundle_pem},
                ),
            )
        )
    if p.writes:
        checks.append(now)
    p.next_check = min(checks, default=now + RETRY_AFTER_ERROR)
    return p


def _renew_reasons(
    leaf: _LeafState, ca_cert: x509.Certificate, settings: Settings, now: dt.datetime
) -> list[str]:
    if not leaf.usable or leaf.cert is None:
        return [leaf.problem]
    cert = leaf.cert
    out = []
    if not issued_by(cert, ca_cert):
        out.append("it was not signed by the current CA")
    have_dns, have_ips = subject_alt_names(cert)
    want_dns, want_ips = wanted_alt_names(settings.dns_names, settings.ip_addresses)
    if (have_dns, have_ips) != (want_dns, want_ips):
        missing = sorted(want_dns - have_dns) + sorted(str(a) for a in want_ips - have_ips)
        extra = sorted(have_dns - want_dns) + sorted(str(a) for a in have_ips - want_ips)
        out.append(f"its SANs differ from the wanted ones (missing: {missing}, extra: {extra})")
    if cert.not_valid_after_utc - now < settings.leaf_lifetime / RENEW_DIVISOR:
        out.append(
            f"less than a third of the leaf lifetime left (notAfter {cert.not_valid_after_utc.isoformat()})"
        )
    return out


def _trusted_at(ca_cert: x509.Certificate, configs: Sequence[Obj], settings: Settings) -> dt.datetime | None:
    """When every webhook will have trusted `ca_cert` for the propagation delay, by what they hold
    now and the time we last wrote their caBundle; None if one does not trust it yet."""
    ready = issued_at(ca_cert) + settings.propagation_delay  # the bundle is written after the CA is made
    for obj in configs:
        if not all(contains(bundle, ca_cert) for _, bundle in webhook_bundles(obj)):
            return None
        updated = bundle_updated_at(obj)
        if updated is not None:
            ready = max(ready, updated + settings.propagation_delay)
    return ready


def _bundle_text(bundle: Sequence[x509.Certificate]) -> str:
    return " + ".join(f"CA sha256={fingerprint(c)}" for c in bundle)
