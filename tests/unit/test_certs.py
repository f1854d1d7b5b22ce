"""certs/ and `dsguard certs`: issuing, the rotation planner on a fake clock, TLS reload under load.

The planner runs against `FakeStore`, an in-memory apiserver with resourceVersion semantics whose
updates *must* be conditional. Tests with real TLS handshakes need certificates valid in real time,
so they run the planner on `AheadClock`: real time plus offsets smaller than the backdating of
notBefore (certs.issue.BACKDATE), which keeps every certificate it issues valid for OpenSSL now.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import ipaddress
import itertools
import logging
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.bootstrap import Conflict, Round, StoreError, inject, reconcile_once, run
from certs.bundle import (
    BUNDLE_UPDATED_ANNOTATION,
    MUTATING,
    VALIDATING,
    Bundle,
    parse_bundle,
    pem_bundle,
    same_bundle,
    webhook_bundles,
)
from certs.issue import (
    BACKDATE,
    CA_LIFETIME,
    LEAF_LIFETIME,
    KeyPair,
    is_ca,
    issue_serving,
    issued_by,
    load_key_pair,
    new_ca,
    service_dns_names,
    subject_alt_names,
    write_files,
)
from certs.rotate import (
    CA_SECRET_TYPE,
    PREVIOUS_CA,
    TLS_SECRET_TYPE,
    ConfigRef,
    Settings,
    secret_data,
)
from dsguard.atomic_files import write_private
from dsguard.cli import main
from dsguard.cli.options import parse_duration
from dsguard.cluster_cache import ClusterCache
from tests.support.builders import daemonset, parsed_policy
from tests.support.polling import poll_async
from tests.support.tls import AheadClock, SecretVolume
from webhook.server import WebhookState, make_app
from webhook.tls import CertReloader, as_files, server_context

Obj = dict[str, Any]

NS, SVC = "dsguard", "dsguard-webhook"
MUTATE, VALIDATE = "dsguard-mutate", "dsguard-validate"
T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)


# --- an in-memory apiserver ------------------------------------------------------------------------


class FakeStore:
    """Secrets and webhook configurations with resourceVersions; updates must carry one."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], Obj] = {}
        self._rv = itertools.count(1)
        self.writes: list[tuple[str, Obj]] = []
        self.before_write: Callable[[str, Obj], None] | None = None  # e.g. a racing writer
        self.after_write: list[Callable[[str, Obj], None]] = []

    @staticmethod
    def _key(kind: str, body: Mapping[str, Any]) -> tuple[str, str | None, str]:
        meta = body["metadata"]
        return kind, meta.get("namespace") if kind == "Secret" else None, meta["name"]

    def put(self, kind: str, body: Obj) -> Obj:
        """Store as is (a write by someone else), bumping the resourceVersion."""
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[self._key(kind, stored)] = stored
        return copy.deepcopy(stored)

    def obj(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        del self.objects[(kind, namespace, name)]

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        await asyncio.sleep(0)  # let racing coroutines interleave, as real I/O would
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create(self, kind: str, body: Obj) -> Obj:
        await asyncio.sleep(0)
        if self.before_write:
            self.before_write(kind, body)
        assert "resourceVersion" not in body["metadata"], "a create must not carry a resourceVersion"
        if self._key(kind, body) in self.objects:
            raise Conflict(f"{kind} {body['metadata']['name']} already exists")
        return self._written(kind, self.put(kind, body))

    async def replace(self, kind: str, body: Obj) -> Obj:
        await asyncio.sleep(0)
        if self.before_write:
            self.before_write(kind, body)
        rv = body["metadata"].get("resourceVersion")
        assert rv, f"an update of {kind} {body['metadata']['name']} without a resourceVersion precondition"
        current = self.objects.get(self._key(kind, body))
        if current is None or current["metadata"]["resourceVersion"] != rv:
            raise Conflict(f"{kind} {body['metadata']['name']} changed")
        return self._written(kind, self.put(kind, body))

    def _written(self, kind: str, stored: Obj) -> Obj:
        self.writes.append((kind, stored))
        for hook in self.after_write:
            hook(kind, stored)
        return stored


def webhook_configuration(kind: str, name: str, hooks: Sequence[str]) -> Obj:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": {"app": "dsguard"}},
        "webhooks": [
            {
                "name": h,
                "clientConfig": {"service": {"name": SVC, "namespace": NS, "path": f"/{h.split('.')[0]}"}},
                "rules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "resources": ["daemonsets"],
                        "operations": ["CREATE", "UPDATE"],
                    }
                ],
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
            for h in hooks
        ],
    }


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "namespace": NS,
        "service": SVC,
        "webhook_configurations": (ConfigRef.parse(MUTATE), ConfigRef.parse(f"validating/{VALIDATE}")),
        "ca_lifetime": 90 * DAY,
        "leaf_lifetime": 30 * DAY,
        "propagation_delay": 30 * SECOND,
        "grace": 5 * MINUTE,
    }
    return Settings(**{**base, **overrides})


@dataclass
class World:
    """A FakeStore with both webhook configurations (three webhooks) and a planner to step."""

    settings: Settings = field(default_factory=settings)
    store: FakeStore = field(default_factory=FakeStore)
    now: dt.datetime = T0

    def __post_init__(self) -> None:
        self.store.put(MUTATING, webhook_configuration(MUTATING, MUTATE, ["mutate.dsguard.io"]))
        self.store.put(
            VALIDATING,
            webhook_configuration(VALIDATING, VALIDATE, ["validate.dsguard.io", "audit.dsguard.io"]),
        )

    async def round(self, at: dt.datetime | None = None) -> Round:
        if at is not None:
            self.now = at
        return await reconcile_once(self.store, self.settings, self.now)

    def secret(self, name: str) -> Obj:
        return self.store.obj("Secret", name, NS)

    def ca(self) -> KeyPair:
        s = self.secret(self.settings.ca_secret)
        return load_key_pair(secret_data(s, "ca.crt") or b"", secret_data(s, "ca.key") or b"")

    def previous(self) -> Bundle:
        return parse_bundle(secret_data(self.secret(self.settings.ca_secret), PREVIOUS_CA) or b"")

    def leaf(self) -> x509.Certificate:
        return parse_bundle(secret_data(self.secret(self.settings.secret), "tls.crt") or b"")[0]

    def leaf_pair(self) -> KeyPair:
        s = self.secret(self.settings.secret)
        return load_key_pair(secret_data(s, "tls.crt") or b"", secret_data(s, "tls.key") or b"")

    def secret_bundle(self) -> Bundle:
        return parse_bundle(secret_data(self.secret(self.settings.secret), "ca.crt") or b"")

    def webhook_bundles(self) -> dict[str, Bundle]:
        out = {}
        for kind, name in ((MUTATING, MUTATE), (VALIDATING, VALIDATE)):
            for hook, bundle in webhook_bundles(self.store.obj(kind, name)):
                out[f"{name}/{hook}"] = bundle
        return out

    def rvs(self) -> dict[tuple[str, str | None, str], str]:
        return {k: v["metadata"]["resourceVersion"] for k, v in self.store.objects.items()}


def written(r: Round) -> list[tuple[str, str]]:
    return [(w.kind, w.name) for w in r.done]


def verify(bundle: Sequence[x509.Certificate], leaf: x509.Certificate, at: dt.datetime, name: str) -> bool:
    """Full X.509 path validation of `leaf` for `name` against `bundle`, as a TLS client does."""
    if not bundle:
        return False
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store(list(bundle))).time(at).build_server_verifier(subject)
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


# --- issuing ---------------------------------------------------------------------------------------


def test_service_dns_names_are_every_form_the_apiserver_may_dial() -> None:
    assert service_dns_names(SVC, NS) == [
        "dsguard-webhook",
        "dsguard-webhook.dsguard",
        "dsguard-webhook.dsguard.svc",
        "dsguard-webhook.dsguard.svc.cluster.local",
    ]


def test_generated_chain_verifies_for_each_san_and_nothing_else() -> None:
    s = settings(extra_dns=("webhook.example.com",), extra_ips=("10.96.0.12", "::1"))
    ca = new_ca()
    leaf = issue_serving(ca, dns_names=s.dns_names, ip_addresses=s.ip_addresses)
    now = dt.datetime.now(dt.UTC)
    dns, ips = subject_alt_names(leaf.cert)
    assert dns == {*service_dns_names(SVC, NS), "webhook.example.com"}
    assert ips == {ipaddress.ip_address("10.96.0.12"), ipaddress.ip_address("::1")}
    for name in [*service_dns_names(SVC, NS), "webhook.example.com", "10.96.0.12", "::1"]:
        assert verify([ca.cert], leaf.cert, now, name), name
    # Controls: another name, another CA and after expiry all fail.
    assert not verify([ca.cert], leaf.cert, now, f"other.{NS}.svc")
    assert not verify([ca.cert], leaf.cert, now, "10.96.0.13")
    assert not verify([new_ca().cert], leaf.cert, now, f"{SVC}.{NS}.svc")
    assert not verify([ca.cert], leaf.cert, leaf.cert.not_valid_after_utc + SECOND, f"{SVC}.{NS}.svc")


def test_keys_are_ecdsa_p256_and_the_extensions_fit_a_ca_and_a_server() -> None:
    ca = new_ca()
    leaf = issue_serving(ca, dns_names=["a"])
    for pair in (ca, leaf):
        assert isinstance(pair.key.curve, ec.SECP256R1)
    ca_bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_bc.critical and ca_bc.value.ca and ca_bc.value.path_length == 0
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not is_ca(leaf.cert)
    eku = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert issued_by(leaf.cert, ca.cert) and not issued_by(leaf.cert, new_ca().cert)
    assert "PRIVATE" not in repr(leaf) and "PRIVATE" not in repr(ca)


def test_lifetimes_are_years_for_the_ca_months_for_the_leaf_and_a_leaf_never_outlives_its_ca() -> None:
    ca = new_ca(now=T0)
    leaf = issue_serving(ca, dns_names=["a"], now=T0)
    assert ca.cert.not_valid_after_utc - T0 == CA_LIFETIME >= 365 * 3 * DAY
    assert leaf.cert.not_valid_after_utc - T0 == LEAF_LIFETIME
    assert 60 * DAY <= LEAF_LIFETIME <= 180 * DAY
    assert ca.cert.not_valid_before_utc == leaf.cert.not_valid_before_utc == T0 - BACKDATE
    short_ca = new_ca(lifetime=10 * DAY, now=T0)
    capped = issue_serving(short_ca, dns_names=["a"], now=T0)
    assert capped.cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


def test_load_key_pair_names_the_problem_without_key_material() -> None:
    ca, other = new_ca(), new_ca()
    with pytest.raises(ValueError, match="does not belong") as info:
        load_key_pair(ca.cert_pem, other.key_pem)
    assert "PRIVATE" not in str(info.value)
    with pytest.raises(ValueError, match="not an unencrypted PEM key"):
        load_key_pair(ca.cert_pem, b"garbage")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_key_pair(b"", ca.key_pem)
    assert load_key_pair(ca.cert_pem, ca.key_pem).cert == ca.cert


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_write_files_keys_are_0600_and_replacing_a_symlink_does_not_follow_it(tmp_path: Path) -> None:
    ca = new_ca()
    leaf = issue_serving(ca, dns_names=["a"])
    paths = write_files(tmp_path / "out", ca, leaf, include_ca_key=True)
    assert {n: _mode(p) for n, p in paths.items()} == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "tls.crt": 0o644,
        "tls.key": 0o600,
    }
    assert paths["tls.key"].read_bytes() == leaf.key_pem
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    # A key file that is a symlink elsewhere is replaced, never written through.
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    victim.chmod(0o644)
    (tmp_path / "out" / "tls.key").unlink()
    (tmp_path / "out" / "tls.key").symlink_to(victim)
    write_private(tmp_path / "out" / "tls.key", leaf.key_pem)
    assert victim.read_bytes() == b"untouched"
    assert _mode(tmp_path / "out" / "tls.key") == 0o600


# --- dsguard certs generate / inject / run (offline parts) ------------------------------------------


def test_cli_generate_writes_a_verifying_chain_keys_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    args = ["certs", "generate", "--service", SVC, "--namespace", NS, "--dns", "hook.example.com"]
    args += ["--ip", "127.0.0.1", "--ca-days", "730", "--days", "60", "--out-dir", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "PRIVATE" not in result.output
    modes = {p.name: _mode(p) for p in out.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "tls.crt": 0o644, "tls.key": 0o600}
    ca = load_key_pair((out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes())
    leaf = load_key_pair((out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes())
    now = dt.datetime.now(dt.UTC)
    for name in [*service_dns_names(SVC, NS), "hook.example.com", "127.0.0.1"]:
        assert verify([ca.cert], leaf.cert, now, name), name
    assert abs(ca.cert.not_valid_after_utc - now - 730 * DAY) < MINUTE
    assert abs(leaf.cert.not_valid_after_utc - now - 60 * DAY) < MINUTE
    bundle_line = next(line for line in result.output.splitlines() if line.startswith("caBundle: "))
    assert base64.b64decode(bundle_line.removeprefix("caBundle: ")) == ca.cert_pem

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0
    assert "already exist" in again.output and "--force" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    renewed = CliRunner().invoke(main, [*args, "--reuse-ca", "--force"])
    assert renewed.exit_code == 0, renewed.output
    assert (out / "ca.key").read_bytes() == before["ca.key"]
    assert (out / "tls.key").read_bytes() != before["tls.key"]
    new_leaf = load_key_pair((out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes())
    assert verify([ca.cert], new_leaf.cert, now, f"{SVC}.{NS}.svc")

    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "ca.key").read_bytes() != before["ca.key"]
    assert _mode(out / "ca.key") == _mode(out / "tls.key") == 0o600


def test_cli_run_rejects_lifetimes_that_cannot_rotate_and_inject_rejects_a_key(tmp_path: Path) -> None:
    run_args = ["certs", "run", "--service", SVC, "--namespace", NS, "--webhook-configuration", MUTATE]
    result = CliRunner().invoke(main, [*run_args, "--ca-days", "90", "--days", "60", "--once"])
    assert result.exit_code == 2
    assert "at most a third of the CA lifetime" in result.output
    bad_ref = CliRunner().invoke(
        main, ["certs", "run", "--service", SVC, "--namespace", NS, "--webhook-configuration", "foo/bar"]
    )
    assert bad_ref.exit_code == 2 and "mutating/NAME" in bad_ref.output
    key_file = tmp_path / "key.pem"
    write_private(key_file, new_ca().key_pem + new_ca().cert_pem)
    injected = CliRunner().invoke(
        main, ["certs", "inject", "--ca-file", str(key_file), "--webhook-configuration", MUTATE]
    )
    assert injected.exit_code == 2 and "private key" in injected.output


@pytest.mark.parametrize(
    "text,seconds",
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("0.5s", 0.5), (" 1H ", 3600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "1h 30m", "-5s", "5m3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_config_refs() -> None:
    assert ConfigRef.parse("x").kinds == (MUTATING, VALIDATING)
    assert ConfigRef.parse("mutating/x") == ConfigRef("x", (MUTATING,))
    assert ConfigRef.parse("ValidatingWebhookConfiguration/x") == ConfigRef("x", (VALIDATING,))
    for bad in ("deployment/x", "mutating/", "a/b/c"):
        with pytest.raises(ValueError):
            ConfigRef.parse(bad)


# --- the planner, step by step on a fake clock ----------------------------------------------------


async def test_bootstrap_creates_both_secrets_and_injects_every_webhook_then_is_a_no_op() -> None:
    w = World()
    r = await w.round()
    assert written(r) == [
        ("Secret", "dsguard-webhook-ca"),
        (MUTATING, MUTATE),
        (VALIDATING, VALIDATE),
        ("Secret", "dsguard-webhook-tls"),
    ]
    ca_secret, tls_secret = w.secret("dsguard-webhook-ca"), w.secret("dsguard-webhook-tls")
    assert ca_secret["type"] == CA_SECRET_TYPE == "Opaque"
    assert sorted(ca_secret["data"]) == ["ca.crt", "ca.key"]
    assert tls_secret["type"] == TLS_SECRET_TYPE == "kubernetes.io/tls"
    assert sorted(tls_secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    ca = w.ca()
    assert w.leaf_pair().cert == w.leaf()
    assert verify([ca.cert], w.leaf(), T0, f"{SVC}.{NS}.svc")
    assert set(w.webhook_bundles()) == {
        f"{MUTATE}/mutate.dsguard.io",
        f"{VALIDATE}/validate.dsguard.io",
        f"{VALIDATE}/audit.dsguard.io",
    }
    assert all(same_bundle(b, [ca.cert]) for b in w.webhook_bundles().values())
    assert same_bundle(w.secret_bundle(), [ca.cert])
    config = w.store.obj(MUTATING, MUTATE)
    assert config["metadata"]["annotations"][BUNDLE_UPDATED_ANNOTATION] == T0.isoformat()
    assert config["metadata"]["labels"] == {"app": "dsguard"}  # the rest of the object is kept

    rvs = w.rvs()
    for later in (T0, T0 + MINUTE, T0 + 19 * DAY):
        again = await w.round(later)
        assert again.done == [] and again.plan.errors == [] and again.converged
    assert w.rvs() == rvs
    assert again.plan.next_check == w.leaf().not_valid_after_utc - 10 * DAY


async def test_leaf_is_renewed_with_a_third_of_its_lifetime_left_by_the_same_ca() -> None:
    w = World()
    await w.round()
    first, ca = w.leaf(), w.ca().cert
    renew_at = first.not_valid_after_utc - 10 * DAY
    assert (await w.round(renew_at - SECOND)).done == []
    r = await w.round(renew_at + SECOND)
    assert written(r) == [("Secret", "dsguard-webhook-tls")]
    assert "less than a third of the leaf lifetime" in r.done[0].reason
    assert w.leaf() != first and issued_by(w.leaf(), ca)
    assert w.leaf().not_valid_after_utc == renew_at + SECOND + 30 * DAY
    assert w.ca().cert == ca


@pytest.mark.parametrize("tamper", ["sans", "key", "foreign-ca", "garbage", "expired"])
async def test_leaf_is_reissued_when_it_is_wrong(tamper: str) -> None:
    w = World()
    await w.round()
    if tamper == "sans":
        w.settings = settings(extra_dns=("hook.example.com",))
    else:
        secret = w.secret("dsguard-webhook-tls")
        other = issue_serving(new_ca(now=T0), dns_names=w.settings.dns_names, now=T0)
        replacement = {
            "key": {"tls.key": other.key_pem},
            "foreign-ca": {"tls.crt": other.cert_pem, "tls.key": other.key_pem},
            "garbage": {"tls.crt": b"not a certificate"},
            "expired": {},
        }[tamper]
        for k, v in replacement.items():
            secret["data"][k] = base64.b64encode(v).decode()
        w.store.put("Secret", secret)
    at = T0 + 31 * DAY if tamper == "expired" else T0 + MINUTE
    r = await w.round(at)
    assert written(r) == [("Secret", "dsguard-webhook-tls")]
    reason = r.done[0].reason
    expected = {
        "sans": "SANs differ",
        "key": "tls.key does not belong",
        "foreign-ca": "not signed by the current CA",
        "garbage": "no PEM certificate",
        "expired": "not valid now",
    }[tamper]
    assert expected in reason
    assert verify([w.ca().cert], w.leaf_pair().cert, at, f"{SVC}.{NS}.svc")
    if tamper == "sans":
        assert verify([w.ca().cert], w.leaf(), at, "hook.example.com")


async def test_ca_rotation_injects_new_and_old_first_switches_after_propagation_drops_after_grace() -> None:
    w = World()
    await w.round()
    old_ca, old_leaf = w.ca().cert, w.leaf()
    name = f"{SVC}.{NS}.svc"
    # Keep the leaf renewed until the CA has less than a third of its lifetime (30 days) left.
    rotate_at = old_ca.not_valid_after_utc - 30 * DAY + SECOND
    await w.round(rotate_at - 5 * DAY)
    assert issued_by(w.leaf(), old_ca) and w.leaf() != old_leaf
    old_leaf = w.leaf()

    # 1. New CA; the bundle (new + old) goes to every webhook and the Secret; the leaf stays.
    r = await w.round(rotate_at)
    assert written(r) == [
        ("Secret", "dsguard-webhook-ca"),
        (MUTATING, MUTATE),
        (VALIDATING, VALIDATE),
        ("Secret", "dsguard-webhook-tls"),
    ]
    new_ca_cert = w.ca().cert
    assert new_ca_cert != old_ca
    assert same_bundle(w.previous(), [old_ca])
    for bundle in [*w.webhook_bundles().values(), w.secret_bundle()]:
        assert same_bundle(bundle, [new_ca_cert, old_ca])
        assert verify(bundle, old_leaf, rotate_at, name)  # the leaf in use still verifies
    assert w.leaf() == old_leaf
    assert any("waits until every webhook's caBundle holds the new CA" in n for n in r.plan.notes)

    # 2. The leaf waits for the propagation delay after the bundle was written...
    for at in (rotate_at, rotate_at + 29 * SECOND):
        r = await w.round(at)
        assert r.done == [] and w.leaf() == old_leaf
        assert r.plan.next_check == rotate_at + 30 * SECOND
        assert any("for the apiservers to see the new caBundle" in n for n in r.plan.notes)
    # ...then is re-issued by the new CA.
    switch = rotate_at + 30 * SECOND
    r = await w.round(switch)
    assert written(r) == [("Secret", "dsguard-webhook-tls")]
    new_leaf = w.leaf()
    assert issued_by(new_leaf, new_ca_cert)
    for bundle in w.webhook_bundles().values():
        assert verify(bundle, new_leaf, switch, name) and verify(bundle, old_leaf, switch, name)

    # 3. The old CA stays for the grace period, then leaves the bundle everywhere.
    r = await w.round(switch + 5 * MINUTE - SECOND)
    assert r.done == [] and r.plan.next_check == switch + 5 * MINUTE
    r = await w.round(switch + 5 * MINUTE)
    assert written(r) == [
        ("Secret", "dsguard-webhook-ca"),
        (MUTATING, MUTATE),
        (VALIDATING, VALIDATE),
        ("Secret", "dsguard-webhook-tls"),
    ]
    assert "has been in the Secret for 0:05:00" in r.done[0].reason
    assert w.previous() == ()
    assert sorted(w.secret("dsguard-webhook-ca")["data"]) == ["ca.crt", "ca.key"]
    for bundle in [*w.webhook_bundles().values(), w.secret_bundle()]:
        assert same_bundle(bundle, [new_ca_cert])
    assert w.leaf() == new_leaf
    assert (await w.round()).done == []


async def test_a_missing_webhook_configuration_is_named_and_holds_the_switch_to_a_new_ca() -> None:
    w = World()
    w.store.delete(VALIDATING, VALIDATE)
    r = await w.round()
    assert len(r.plan.errors) == 1
    error = r.plan.errors[0]
    assert f'ValidatingWebhookConfiguration "{VALIDATE}" not found' in error
    assert "install manifests" in error
    # The bootstrap still happens: nothing works yet, so nothing can break.
    assert ("Secret", "dsguard-webhook-tls") in written(r)
    assert r.plan.next_check == T0  # wrote something: look again soon

    # A rotation with the configuration missing: the bundle goes where it can, the leaf waits.
    rotate_at = w.ca().cert.not_valid_after_utc - 30 * DAY + SECOND
    await w.round(rotate_at - 5 * DAY)
    old_leaf = w.leaf()
    await w.round(rotate_at)
    for at in (rotate_at + MINUTE, rotate_at + DAY):
        r = await w.round(at)
        assert r.done == [] and w.leaf() == old_leaf
        assert r.plan.errors and r.plan.next_check == at + dt.timedelta(seconds=30)
    # Once it is back, it gets the bundle, and the leaf follows after the propagation delay.
    w.store.put(VALIDATING, webhook_configuration(VALIDATING, VALIDATE, ["validate.dsguard.io"]))
    back = rotate_at + DAY + MINUTE
    assert written(await w.round(back)) == [(VALIDATING, VALIDATE)]
    assert (await w.round(back + 29 * SECOND)).done == []
    assert written(await w.round(back + 30 * SECOND)) == [("Secret", "dsguard-webhook-tls")]
    assert issued_by(w.leaf(), w.ca().cert)


async def test_a_mutating_and_validating_configuration_of_the_same_name_both_get_the_bundle() -> None:
    w = World(settings(webhook_configurations=(ConfigRef.parse("dsguard"),)))
    w.store.put(MUTATING, webhook_configuration(MUTATING, "dsguard", ["m.dsguard.io"]))
    w.store.put(VALIDATING, webhook_configuration(VALIDATING, "dsguard", ["v.dsguard.io"]))
    r = await w.round()
    assert (MUTATING, "dsguard") in written(r) and (VALIDATING, "dsguard") in written(r)
    assert (MUTATING, MUTATE) not in written(r)


async def test_a_secret_of_the_wrong_type_is_an_error_and_nothing_is_written() -> None:
    w = World()
    w.store.put(
        "Secret",
        {"metadata": {"name": "dsguard-webhook-tls", "namespace": NS}, "type": "Opaque", "data": {}},
    )
    r = await w.round()
    assert r.done == []
    assert any("has type Opaque, not kubernetes.io/tls" in e for e in r.plan.errors)
    assert ("Secret", NS, "dsguard-webhook-ca") not in w.store.objects


async def test_a_working_certificate_from_elsewhere_is_adopted_into_the_overlap() -> None:
    """`dsguard certs generate` + a hand-made Secret and caBundle, then the loop takes over: the CA
    that signed the certificate in use stays trusted until the loop's own certificate is out."""
    w = World()
    name = f"{SVC}.{NS}.svc"
    hand_ca = new_ca(now=T0 - DAY)
    hand_leaf = issue_serving(hand_ca, dns_names=w.settings.dns_names, now=T0 - DAY)
    w.store.put(
        "Secret",
        {
            "metadata": {"name": "dsguard-webhook-tls", "namespace": NS},
            "type": "kubernetes.io/tls",
            "data": {
                k: base64.b64encode(v).decode()
                for k, v in (("tls.crt", hand_leaf.cert_pem), ("tls.key", hand_leaf.key_pem))
            },
        },
    )
    for kind, cname in ((MUTATING, MUTATE), (VALIDATING, VALIDATE)):
        config = w.store.obj(kind, cname)
        for hook in config["webhooks"]:
            hook["clientConfig"]["caBundle"] = base64.b64encode(hand_ca.cert_pem).decode()
        w.store.put(kind, config)

    r = await w.round()
    assert "keeping 1 old CA(s)" in r.done[0].reason
    assert w.leaf() == hand_leaf.cert
    assert same_bundle(w.previous(), [hand_ca.cert])
    for bundle in w.webhook_bundles().values():
        assert verify(bundle, hand_leaf.cert, T0, name)
    await w.round(T0 + 30 * SECOND)
    assert issued_by(w.leaf(), w.ca().cert)
    await w.round(T0 + 30 * SECOND + 5 * MINUTE)
    assert all(same_bundle(b, [w.ca().cert]) for b in w.webhook_bundles().values())


async def test_a_racing_writer_makes_the_round_replan_and_two_loops_agree_on_one_ca() -> None:
    w = World()
    raced: list[str] = []

    def race(kind: str, body: Obj) -> None:
        if kind == MUTATING and not raced:  # someone edits the configuration under our feet
            raced.append(kind)
            w.store.put(MUTATING, w.store.obj(MUTATING, MUTATE))

    w.store.before_write = race
    r = await w.round()
    assert r.conflict and "changed" in r.conflict
    assert written(r) == [("Secret", "dsguard-webhook-ca")]
    r = await w.round()
    assert r.conflict == "" and ("Secret", "dsguard-webhook-tls") in written(r)
    assert (await w.round()).done == []

    # Two loops at once from scratch: one CA wins; whatever the other wrote is replaced.
    w2 = World()
    for _ in range(4):
        await asyncio.gather(w2.round(), reconcile_once(w2.store, w2.settings, w2.now))
    ca = w2.ca().cert
    assert issued_by(w2.leaf(), ca)
    assert all(same_bundle(b, [ca]) for b in w2.webhook_bundles().values())
    assert same_bundle(w2.secret_bundle(), [ca])
    assert (await w2.round()).done == []


async def test_no_key_material_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    w = World()
    plans = []
    for at in (T0, T0 + 61 * DAY, T0 + 61 * DAY + MINUTE, T0 + 62 * DAY):
        r = await w.round(at)
        plans.append(repr(r))
    keys = [
        secret_data(body, k) or b""
        for kind, body in w.store.writes
        if kind == "Secret"
        for k in ("ca.key", "tls.key")
        if secret_data(body, k)
    ]
    assert len(keys) >= 4
    text = caplog.text + "".join(plans)
    assert "new CA" in caplog.text and "new serving certificate" in caplog.text
    assert "PRIVATE KEY" not in text
    for key in keys:
        assert b"PRIVATE KEY" in key
        body = b"".join(key.splitlines()[1:-1]).decode()
        assert body[40:80] not in text
        assert base64.b64encode(key).decode()[60:100] not in text


async def test_inject_sets_every_webhooks_bundle_retries_conflicts_and_names_a_missing_one() -> None:
    w = World()
    ca = new_ca(now=T0)
    races = iter([True, False])

    def race(kind: str, body: Obj) -> None:
        if kind == VALIDATING and next(races, False):
            w.store.put(VALIDATING, w.store.obj(VALIDATING, VALIDATE))

    w.store.before_write = race
    refs = [ConfigRef.parse(MUTATE), ConfigRef.parse(f"validating/{VALIDATE}")]
    lines = await inject(w.store, refs, ca.cert_pem, now=T0)
    assert lines == [
        f"{MUTATING} {MUTATE}: caBundle set on 1 webhook(s)",
        f"{VALIDATING} {VALIDATE}: caBundle set on 2 webhook(s)",
    ]
    assert all(same_bundle(b, [ca.cert]) for b in w.webhook_bundles().values())
    with pytest.raises(StoreError, match='"absent" not found'):
        await inject(w.store, [ConfigRef.parse("absent")], ca.cert_pem, now=T0)


# --- the loop over a long fake time: no window where the apiserver cannot verify the webhook -------


class _Stop(Exception):
    pass


@dataclass
class FakeTime:
    t: dt.datetime
    end: dt.datetime
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> dt.datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.t += dt.timedelta(seconds=seconds)
        if self.t > self.end:
            raise _Stop()


Timeline = list[tuple[dt.datetime, Any]]


def _active(events: Timeline, lo: dt.datetime, hi: dt.datetime) -> list[Any]:
    """The values in effect at some time in (lo, hi]; events[i] holds from its time to the next's."""
    out = []
    for i, (t, value) in enumerate(events):
        until = events[i + 1][0] if i + 1 < len(events) else None
        if t <= hi and (until is None or until > lo):
            out.append(value)
    return out


async def test_loop_over_three_ca_lifetimes_never_leaves_a_served_certificate_unverifiable() -> None:
    """Run the real loop (`run`) on a fake clock for 270 days of 90-day CAs and 30-day leaves.

    Assumptions under test: an apiserver may use any caBundle of the last `propagation_delay`, a
    pod may serve any certificate that was in the Secret during the last `grace`. Every such pair
    must verify, at every moment after the bootstrap."""
    s = settings()
    w = World(s)
    clock = FakeTime(T0, T0 + 270 * DAY)
    leaves: Timeline = []
    bundles: dict[str, Timeline] = {}

    def record(kind: str, body: Obj) -> None:
        if kind == "Secret" and body["metadata"]["name"] == s.secret:
            leaf = parse_bundle(secret_data(body, "tls.crt") or b"")[0]
            if not leaves or leaves[-1][1] != leaf:
                leaves.append((clock.t, leaf))
        elif kind != "Secret":
            for hook, bundle in webhook_bundles(body):
                bundles.setdefault(f"{body['metadata']['name']}/{hook}", []).append((clock.t, bundle))

    w.store.after_write.append(record)
    with pytest.raises(_Stop):
        await run(w.store, s, interval=DAY.total_seconds(), clock=clock.now, sleep=clock.sleep)

    cas = {w.ca().cert, *(bundle[0] for tl in bundles.values() for _, bundle in tl)}
    assert len(cas) >= 3, "the CA should have been rotated at least twice"
    assert len(leaves) >= 10
    assert max(len(b) for tl in bundles.values() for _, b in tl) == 2
    assert len(clock.sleeps) < 600, "the loop should sleep until something is due, not spin"

    events = [t for t, _ in leaves] + [t for tl in bundles.values() for t, _ in tl]
    lags = (s.propagation_delay, s.grace)
    check_times = sorted(
        {e + d for e in events for d in (dt.timedelta(0), *(lag - SECOND / 1000 for lag in lags))}
    )
    start = T0 + s.propagation_delay
    checked = 0
    for t in (t for t in check_times if start <= t <= clock.t):
        served = _active(leaves, t - s.grace, t)
        for hook, timeline in bundles.items():
            for bundle in _active(timeline, t - s.propagation_delay, t):
                for leaf in served:
                    assert verify(bundle, leaf, t, f"{SVC}.{NS}.svc"), (
                        f"at {t}: {hook} with {len(bundle)} CA(s) rejects a leaf served until grace ends"
                    )
                    checked += 1
    assert checked > 100
    for (_, leaf), (replaced_at, _) in itertools.pairwise(leaves):
        assert leaf.not_valid_after_utc > replaced_at + s.grace, "a leaf must be replaced well before expiry"


# --- TLS: reload under load, and the rotation overlap with real handshakes --------------------------


async def peer_certificate(
    port: int, ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> x509.Certificate:
    """Handshake on a new connection and return the server's certificate."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname), 10
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def client_context(*cas: x509.Certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=pem_bundle(cas).decode())


POLICY = parsed_policy(
    "add-infra-toleration",
    {
        "tolerations": {
            "required": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
            "onMissing": "Add",
        }
    },
    namespaces=["agents"],
)


def review_body(uid: str) -> bytes:
    ds = daemonset("agent", "agents", container="a", image="registry.example.com/agent:1.0.0", app_label=True)
    request = {
        "uid": uid,
        "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
        "name": "agent",
        "namespace": "agents",
        "operation": "CREATE",
        "userInfo": {"username": "alice"},
        "object": ds,
        "dryRun": False,
    }
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


@contextlib.asynccontextmanager
async def webhook_server(cert_file: Path, key_file: Path) -> AsyncIterator[tuple[int, CertReloader]]:
    """The real webhook app (static policies, no cluster) on 127.0.0.1 with a reloadable context."""
    cache = ClusterCache(static_policies=[POLICY])
    cache.use_static_facts([], "v1.33.1")
    ctx = server_context(cert_file, key_file)
    server = TestServer(make_app(WebhookState(cache=cache)), host="127.0.0.1", port=0)
    await server.start_server(ssl=ctx)
    try:
        assert server.port is not None
        yield server.port, CertReloader(ctx, cert_file, key_file)
    finally:
        await server.close()


@dataclass
class Load:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    uids: Iterator[int] = field(default_factory=itertools.count)


async def _worker(
    session: aiohttp.ClientSession, port: int, load: Load, stop: asyncio.Event, deadline: float
) -> None:
    while not stop.is_set() and time.monotonic() < deadline:
        uid = f"uid-{next(load.uids)}"
        endpoint = "mutate" if int(uid[4:]) % 2 else "validate"
        try:
            async with session.post(
                f"https://127.0.0.1:{port}/{endpoint}",
                data=review_body(uid),
                headers={"Content-Type": "application/json"},
            ) as resp:
                body = await resp.read()
                if resp.status != 200 or orjson.loads(body)["response"]["uid"] != uid:
                    load.failures.append(f"{endpoint} {uid}: HTTP {resp.status} {body[:200]!r}")
                else:
                    load.ok += 1
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as e:
            load.failures.append(f"{endpoint} {uid}: {type(e).__name__}: {e}")


async def _until_served(load: Load, count: int, what: str) -> None:
    await poll_async(lambda: load.ok >= count, what=what, timeout=20)


@pytest.mark.parametrize("writer", ["symlink-swap", "in-place"])
async def test_webhook_picks_up_new_files_under_load_without_a_failed_request(
    tmp_path: Path, writer: str
) -> None:
    """Keep-alive and new-connection clients post AdmissionReviews while the serving certificate is
    replaced five times (also across a CA switch, the clients trusting both CAs) and check() runs
    at every half-written moment. Not one request may fail; a new connection after each reload
    must see the new certificate; a request whose body is in flight across a reload completes."""
    ca_a, ca_b = new_ca(), new_ca()
    issuers = [ca_a, ca_a, ca_b, ca_b, ca_a, ca_b]
    leaves = [issue_serving(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"]) for ca in issuers]
    volume = SecretVolume(tmp_path / "volume")
    plain = tmp_path / "plain"
    plain.mkdir()
    if writer == "symlink-swap":
        volume.update({"tls.crt": leaves[0].cert_pem, "tls.key": leaves[0].key_pem})
        cert_file, key_file = volume.path("tls.crt"), volume.path("tls.key")
    else:
        cert_file, key_file = plain / "tls.crt", plain / "tls.key"
        cert_file.write_bytes(leaves[0].cert_pem)
        write_private(key_file, leaves[0].key_pem)
    trust = client_context(ca_a.cert, ca_b.cert)
    load = Load()
    stop = asyncio.Event()
    deadline = time.monotonic() + 60

    async with webhook_server(cert_file, key_file) as (port, reloader):
        keep_alive = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust, limit=4))
        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust, force_close=True))
        slow_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust))
        async with keep_alive, fresh, slow_session:
            workers = [asyncio.create_task(_worker(keep_alive, port, load, stop, deadline)) for _ in range(4)]
            workers += [asyncio.create_task(_worker(fresh, port, load, stop, deadline)) for _ in range(2)]
            try:
                assert await peer_certificate(port, trust) == leaves[0].cert
                for i, leaf in enumerate(leaves[1:], start=1):
                    # A request whose body is half sent when the certificate changes.
                    started, release = asyncio.Event(), asyncio.Event()

                    async def slow_body(
                        started: asyncio.Event = started,
                        release: asyncio.Event = release,
                        uid: str = f"slow-{i}",
                    ) -> AsyncIterator[bytes]:
                        body = review_body(uid)
                        yield body[:40]
                        started.set()
                        await release.wait()
                        yield body[40:]

                    slow = asyncio.create_task(
                        slow_session.post(
                            f"https://127.0.0.1:{port}/validate",
                            data=slow_body(),
                            headers={"Content-Type": "application/json"},
                        )
                    )
                    await poll_async(started.is_set, what="the slow request to start", timeout=20)
                    before = load.ok
                    await _until_served(load, before + 30, "requests before the change")
                    if writer == "symlink-swap":
                        volume.update({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
                    else:
                        cert_file.write_bytes(leaf.cert_pem)  # the certificate first, then the key in parts
                        await asyncio.sleep(0)
                        assert reloader.check() is False  # new certificate, old key: not loaded
                        write_private(key_file, leaf.key_pem[: len(leaf.key_pem) // 2])
                        await asyncio.sleep(0)
                        assert reloader.check() is False  # half a key: not loaded
                        assert await peer_certificate(port, trust) == leaves[i - 1].cert
                        write_private(key_file, leaf.key_pem)
                    mid = load.ok
                    await _until_served(load, mid + 10, "requests during the change")
                    assert reloader.check() is True
                    assert reloader.check() is False  # nothing changed since
                    assert await peer_certificate(port, trust) == leaf.cert  # a new connection: new cert
                    release.set()
                    resp = await slow
                    async with resp:
                        assert resp.status == 200
                        assert orjson.loads(await resp.read())["response"]["uid"] == f"slow-{i}"
                    after = load.ok
                    await _until_served(load, after + 30, "requests after the change")
            finally:
                stop.set()
                await asyncio.gather(*workers)
    assert reloader.reloads == len(leaves) - 1
    assert load.failures == []
    assert load.ok >= 350


def test_as_files_in_memory_and_on_disk_load_the_same_pair(tmp_path: Path) -> None:
    leaf = issue_serving(new_ca(), dns_names=["a"])
    for memfd in (True, False):
        if memfd and not hasattr(os, "memfd_create"):
            continue
        with as_files(leaf.cert_pem, leaf.key_pem, memfd=memfd) as (cert_path, key_path):
            server_context(cert_path, key_path)
            if not memfd:
                assert _mode(Path(key_path)) == 0o600
                assert _mode(Path(key_path).parent) == 0o700
        if not memfd:
            assert not Path(key_path).exists()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes) -> bytes:
    writer.write(text + b"\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 10)


async def test_rotation_overlap_with_real_handshakes(tmp_path: Path) -> None:
    """Walk the planner through renewals and a CA rotation on a clock a few minutes ahead, serving
    the Secret's certificate over TLS. A client with the old bundle keeps working until the switch;
    a client with the new bundle (new + old CA) works with the old and the new certificate."""
    s = settings(
        extra_ips=("127.0.0.1",),
        ca_lifetime=6 * MINUTE,
        leaf_lifetime=2 * MINUTE,
        propagation_delay=10 * SECOND,
        grace=30 * SECOND,
    )
    w = World(s)
    clock = AheadClock()
    volume = SecretVolume(tmp_path / "volume")
    await w.round(clock.at(dt.timedelta(0)))
    volume.update_from_secret(w.secret(s.secret))
    old_bundle = w.webhook_bundles()[f"{MUTATE}/mutate.dsguard.io"]
    old_client = client_context(*old_bundle)
    ctx = server_context(volume.path("tls.crt"), volume.path("tls.key"))
    reloader = CertReloader(ctx, volume.path("tls.crt"), volume.path("tls.key"))
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]

    async def sync() -> None:
        """The kubelet updates the volume, the webhook's reloader picks it up."""
        volume.update_from_secret(w.secret(s.secret))
        assert reloader.check() is True

    try:
        assert await peer_certificate(port, old_client) == w.leaf()
        for offset in (90 * SECOND, 180 * SECOND):  # two renewals by the same CA
            r = await w.round(clock.at(offset))
            assert written(r) == [("Secret", s.secret)]
            await sync()
            assert await peer_certificate(port, old_client) == w.leaf()

        # The CA has under a third of its lifetime left: rotation starts, the leaf stays.
        rotate = clock.at(245 * SECOND)
        r = await w.round(rotate)
        assert ("Secret", s.ca_secret) in written(r) and (MUTATING, MUTATE) in written(r)
        new_bundle = w.webhook_bundles()[f"{MUTATE}/mutate.dsguard.io"]
        assert len(new_bundle) == 2 and new_bundle[1] == old_bundle[0]
        new_client = client_context(*new_bundle)
        old_leaf = w.leaf()
        for client in (old_client, new_client):
            assert await peer_certificate(port, client) == old_leaf
        assert (await w.round(clock.at(250 * SECOND))).done == []  # propagation delay

        # A connection the old-bundle client holds open across the switch.
        held = await asyncio.open_connection("127.0.0.1", port, ssl=old_client, server_hostname="127.0.0.1")
        assert await _echo_once(*held, b"before") == b"before\n"
        r = await w.round(clock.at(256 * SECOND))
        assert written(r) == [("Secret", s.secret)]
        assert issued_by(w.leaf(), new_bundle[0])
        await sync()
        assert await peer_certificate(port, new_client) == w.leaf()
        assert await _echo_once(*held, b"after") == b"after\n"  # in flight: undisturbed
        held[1].close()
        # Control: a client that never got the new bundle fails on a new connection. This is the
        # window the planner avoids by writing the bundle first and waiting before the switch.
        with pytest.raises(ssl.SSLCertVerificationError):
            await peer_certificate(port, old_client)

        assert (await w.round(clock.at(280 * SECOND))).done == []  # grace
        r = await w.round(clock.at(287 * SECOND))
        assert (MUTATING, MUTATE) in written(r)
        final = w.webhook_bundles()[f"{MUTATE}/mutate.dsguard.io"]
        assert same_bundle(final, new_bundle[:1])
        assert await peer_certificate(port, client_context(*final)) == w.leaf()
    finally:
        server.close()
        await server.wait_closed()
