"""`dsguard certs` against the real control plane: the apiserver must be able to call the webhook at
every step of a bootstrap, renewals and a CA rotation.

Each test registers its own Mutating/ValidatingWebhookConfiguration (by URL, on 127.0.0.1, selecting
only the test's namespace, failurePolicy Fail) and serves the real webhook app in-process from a
directory laid out like the kubelet's Secret volume, filled from the serving Secret. "The apiserver
can call the webhook" is checked by `kubectl create --dry-run=server` of a DaemonSet: the mutating
webhook must have added a toleration and the validating one must have answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from cryptography import x509

from certs.bootstrap import Conflict, KubeStore, Round, reconcile_once
from certs.bundle import parse_bundle, same_bundle, webhook_bundles
from certs.issue import issue_serving, issued_by, load_key_pair, new_ca, service_dns_names
from certs.rotate import ConfigRef, Settings, secret_data
from dsguard.cluster_cache import ClusterCache
from dsguard.kube import api_client
from localcluster.cluster import LocalCluster
from localcluster.procs import free_port
from localcluster.webhook_host import webhook_configurations
from tests.support.builders import daemonset, parsed_policy
from tests.support.tls import AheadClock, SecretVolume
from webhook.server import WebhookState, make_app
from webhook.tls import CertReloader, server_context

REPO = Path(__file__).resolve().parents[2]
SERVICE = "dsguard-webhook"
TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
SECOND = dt.timedelta(seconds=1)
MINUTE = dt.timedelta(minutes=1)


@dataclass
class Env:
    cluster: LocalCluster
    namespace: str
    mutate: str  # configuration names, unique to the test
    validate: str
    port: int
    secret: str = "dsguard-webhook-tls"
    ca_secret: str = "dsguard-webhook-ca"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def get(self, *args: str) -> Any:
        return self.cluster.kubectl_json("get", *args)

    def secret_obj(self, name: str) -> Any:
        return self.get("secret", name, "-n", self.namespace)

    def config_bundles(self) -> dict[str, tuple[x509.Certificate, ...]]:
        out = {}
        for kind, name in (
            ("mutatingwebhookconfiguration", self.mutate),
            ("validatingwebhookconfiguration", self.validate),
        ):
            for hook, bundle in webhook_bundles(self.get(kind, name)):
                out[f"{name}/{hook}"] = bundle
        return out

    def config_refs(self) -> tuple[ConfigRef, ...]:
        return (ConfigRef.parse(f"mutating/{self.mutate}"), ConfigRef.parse(f"validating/{self.validate}"))


@pytest.fixture
def env(cluster: LocalCluster, namespace: str) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:6]
    e = Env(
        cluster, namespace, f"dsguard-certs-{suffix}-mutate", f"dsguard-certs-{suffix}-validate", free_port()
    )
    docs = webhook_configurations(
        f"https://127.0.0.1:{e.port}",
        b"",
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    )
    for doc, name in zip(docs, (e.mutate, e.validate), strict=True):
        doc["metadata"]["name"] = name
        for hook in doc["webhooks"]:
            del hook["clientConfig"]["caBundle"]  # as the install manifests leave it: for us to inject
    e.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    yield e
    e.kubectl(
        "delete", "--ignore-not-found", f"mutatingwebhookconfiguration/{e.mutate}",
        f"validatingwebhookconfiguration/{e.validate}", check=False,
    )  # fmt: skip


@web.middleware
async def _one_request_per_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No keep-alive: every call of the apiserver is a new TLS handshake against what is served now
    (otherwise a connection made before a reload would hide a certificate the apiserver rejects)."""
    response = await handler(request)
    response.force_close()
    return response


class Webhook:
    """The webhook app served from a Secret-volume-like directory; `sync` plays the kubelet."""

    def __init__(self, env: Env, volume: SecretVolume) -> None:
        self.env = env
        self.volume = volume
        add = {"tolerations": {"required": [TOLERATION], "onMissing": "Add"}}
        cache = ClusterCache(
            static_policies=[parsed_policy("add-infra-toleration", add, namespaces=[env.namespace])]
        )
        cache.use_static_facts([], "v1.37.2")
        self.state = WebhookState(cache=cache)
        self.ctx = server_context(volume.path("tls.crt"), volume.path("tls.key"))
        self.reloader = CertReloader(self.ctx, volume.path("tls.crt"), volume.path("tls.key"))
        app = make_app(self.state)
        app.middlewares.append(_one_request_per_connection)
        self.server = TestServer(app, host="127.0.0.1", port=env.port)
        self.checks = 0

    def sync(self) -> bool:
        """Copy the serving Secret into the volume (as the kubelet does) and reload; True if reloaded."""
        self.volume.update_from_secret(self.env.secret_obj(self.env.secret))
        return self.reloader.check()

    def served(self) -> x509.Certificate:
        return parse_bundle(self.reloader.cert_pem)[0]

    def _reviews(self, endpoint: str, verdict: str) -> float:
        value = self.state.metrics.registry.get_sample_value(
            "dsguard_webhook_reviews_total", {"endpoint": endpoint, "verdict": verdict}
        )
        return value or 0.0

    async def dry_run(self) -> subprocess.CompletedProcess[str]:
        self.checks += 1
        ds = daemonset(
            f"agent-{self.checks}", self.env.namespace, app="agent", image="registry.example.com/agent:1.0.0"
        )
        return await asyncio.to_thread(
            self.env.kubectl,
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(ds),
            check=False,
        )

    async def assert_apiserver_calls_it(self, when: str) -> None:
        """Both webhooks are called over TLS and answer: the toleration is added, /validate allows."""
        validated = self._reviews("validate", "allowed")
        proc = await self.dry_run()
        assert proc.returncode == 0, f"{when}: the apiserver could not call the webhook: {proc.stderr}"
        tolerations = json.loads(proc.stdout)["spec"]["template"]["spec"].get("tolerations")
        assert tolerations == [TOLERATION], f"{when}: the mutating webhook was not applied"
        assert self._reviews("validate", "allowed") == validated + 1, f"{when}: /validate was not called"


@contextlib.asynccontextmanager
async def serving(env: Env, volume: SecretVolume) -> AsyncIterator[Webhook]:
    hook = Webhook(env, volume)
    await hook.server.start_server(ssl=hook.ctx)
    try:
        yield hook
    finally:
        await hook.server.close()


def _certs_cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "dsguard.cli", "certs", "run", "--once",
        "--namespace", env.namespace, "--service", SERVICE, "--ip", "127.0.0.1",
        "--secret", env.secret, "--ca-secret", env.ca_secret,
        "--kubeconfig", str(env.cluster.kubeconfig), *args,
    ]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=environ, check=False)


async def test_cli_bootstrap_writes_the_secrets_and_both_cabundles(env: Env, tmp_path: Path) -> None:
    hooks = (
        "--webhook-configuration",
        f"mutating/{env.mutate}",
        "--webhook-configuration",
        f"validating/{env.validate}",
    )
    missing = await asyncio.to_thread(_certs_cli, env, *hooks, "--webhook-configuration", "no-such-config")
    assert missing.returncode == 1
    assert 'ValidatingWebhookConfiguration "no-such-config" not found' in missing.stderr
    assert "PRIVATE KEY" not in missing.stderr + missing.stdout

    proc = await asyncio.to_thread(_certs_cli, env, *hooks)
    assert proc.returncode == 0, proc.stderr
    assert "PRIVATE KEY" not in proc.stderr + proc.stdout

    ca_secret, tls_secret = env.secret_obj(env.ca_secret), env.secret_obj(env.secret)
    assert ca_secret["type"] == "Opaque" and sorted(ca_secret["data"]) == ["ca.crt", "ca.key"]
    assert tls_secret["type"] == "kubernetes.io/tls"
    assert sorted(tls_secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    ca = load_key_pair(secret_data(ca_secret, "ca.crt") or b"", secret_data(ca_secret, "ca.key") or b"")
    leaf = load_key_pair(secret_data(tls_secret, "tls.crt") or b"", secret_data(tls_secret, "tls.key") or b"")
    assert issued_by(leaf.cert, ca.cert)
    assert secret_data(tls_secret, "ca.crt") == ca.cert_pem
    bundles = env.config_bundles()
    assert len(bundles) == 2
    for hook, bundle in bundles.items():
        assert same_bundle(bundle, [ca.cert]), hook
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == service_dns_names(SERVICE, env.namespace)

    volume = SecretVolume(tmp_path / "volume")
    volume.update_from_secret(tls_secret)
    async with serving(env, volume) as webhook:
        await webhook.assert_apiserver_calls_it("after the bootstrap")
        # Control: a certificate from a CA the configurations don't hold is refused by the apiserver.
        stranger = issue_serving(new_ca(), dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        volume.update({"tls.crt": stranger.cert_pem, "tls.key": stranger.key_pem})
        assert webhook.reloader.check() is True
        refused = await webhook.dry_run()
        assert refused.returncode != 0 and "x509" in refused.stderr, refused.stderr
        assert webhook.sync() is True
        await webhook.assert_apiserver_calls_it("with the Secret's certificate again")

    # Idempotent: a second run writes nothing.
    rvs = [env.secret_obj(n)["metadata"]["resourceVersion"] for n in (env.secret, env.ca_secret)]
    again = await asyncio.to_thread(_certs_cli, env, *hooks)
    assert again.returncode == 0, again.stderr
    assert [env.secret_obj(n)["metadata"]["resourceVersion"] for n in (env.secret, env.ca_secret)] == rvs
    dry = await asyncio.to_thread(_certs_cli, env, *hooks, "--dry-run")
    assert dry.returncode == 0 and "up to date" in dry.stdout, dry.stdout + dry.stderr


async def test_renewals_and_a_ca_rotation_never_break_the_apiservers_calls(env: Env, tmp_path: Path) -> None:
    """Walk bootstrap -> two renewals -> CA rotation (bundle first, switch, old CA dropped) against the
    real apiserver on a clock a few minutes ahead (so lifetimes of minutes pass at once). The
    propagation delay and the grace period pass in real time, by polling the loop's rounds."""
    settings = Settings(
        namespace=env.namespace,
        service=SERVICE,
        secret=env.secret,
        ca_secret=env.ca_secret,
        webhook_configurations=env.config_refs(),
        extra_ips=("127.0.0.1",),
        ca_lifetime=6 * MINUTE,
        leaf_lifetime=2 * MINUTE,
        propagation_delay=2 * SECOND,
        grace=3 * SECOND,
    )
    clock = AheadClock()
    offset = dt.timedelta(0)

    def now() -> dt.datetime:
        return clock.at(offset + (dt.datetime.now(dt.UTC) - clock.start))

    api = await api_client(str(env.cluster.kubeconfig))
    store = KubeStore(api)

    async def round_() -> Round:
        r = await reconcile_once(store, settings, now())
        assert not r.plan.errors and not r.conflict, (r.plan.errors, r.conflict)
        return r

    def written(r: Round) -> list[str]:
        return [f"{w.kind}/{w.name}" for w in r.done]

    def ca_of_secret() -> x509.Certificate:
        return parse_bundle(secret_data(env.secret_obj(env.ca_secret), "ca.crt") or b"")[0]

    def leaf_of_secret() -> x509.Certificate:
        return parse_bundle(secret_data(env.secret_obj(env.secret), "tls.crt") or b"")[0]

    async def rounds_until(what: str, done: Callable[[Round], bool], within: float = 30.0) -> Round:
        """Run rounds (as the loop does when due) until `done(round)`; the webhook stays callable."""
        deadline = time.monotonic() + within
        while True:
            r = await round_()
            if done(r):
                return r
            await webhook.assert_apiserver_calls_it(f"while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {within}s; last notes: {r.plan.notes}")
            await asyncio.sleep(0.2)

    volume = SecretVolume(tmp_path / "volume")
    try:
        r = await round_()
        assert written(r) == [
            f"Secret/{env.ca_secret}",
            f"MutatingWebhookConfiguration/{env.mutate}",
            f"ValidatingWebhookConfiguration/{env.validate}",
            f"Secret/{env.secret}",
        ]
        old_ca = ca_of_secret()
        volume.update_from_secret(env.secret_obj(env.secret))
        async with serving(env, volume) as webhook:
            await webhook.assert_apiserver_calls_it("after the bootstrap")
            assert (await round_()).done == []

            for offset in (90 * SECOND, 180 * SECOND):  # noqa: B007 - read by now()
                before = leaf_of_secret()
                r = await round_()
                assert written(r) == [f"Secret/{env.secret}"], r.plan.notes
                await webhook.assert_apiserver_calls_it("after a renewal, before the kubelet sync")
                assert webhook.sync() is True
                assert webhook.served() != before and issued_by(webhook.served(), old_ca)
                await webhook.assert_apiserver_calls_it("after a renewal")

            # Rotation: new CA, bundle = new + old in both configurations; the leaf stays.
            offset = 245 * SECOND
            old_leaf = leaf_of_secret()
            r = await round_()
            assert f"Secret/{env.ca_secret}" in written(r)
            new_ca_cert = ca_of_secret()
            assert new_ca_cert != old_ca
            for hook, bundle in env.config_bundles().items():
                assert same_bundle(bundle, [new_ca_cert, old_ca]), hook
            assert leaf_of_secret() == old_leaf
            webhook.sync()
            await webhook.assert_apiserver_calls_it("with the new+old bundle and the old leaf")

            # The switch comes after the propagation delay; the kubelet syncs a little later.
            r = await rounds_until("the new leaf", lambda r: f"Secret/{env.secret}" in written(r))
            assert issued_by(leaf_of_secret(), new_ca_cert)
            await webhook.assert_apiserver_calls_it("new leaf in the Secret, old one still served")
            assert webhook.sync() is True
            assert issued_by(webhook.served(), new_ca_cert)
            await webhook.assert_apiserver_calls_it("serving the new leaf, new+old bundle")

            # The old CA leaves after the grace period.
            r = await rounds_until(
                "the old CA to be dropped", lambda r: f"Secret/{env.ca_secret}" in written(r)
            )
            for hook, bundle in env.config_bundles().items():
                assert same_bundle(bundle, [new_ca_cert]), hook
            assert "previous-ca.crt" not in env.secret_obj(env.ca_secret)["data"]
            webhook.sync()
            await webhook.assert_apiserver_calls_it("after the old CA left the bundle")
            assert (await round_()).done == []

        # Updates are conditional on the resourceVersion read: a stale one is a Conflict.
        stale = env.secret_obj(env.secret)
        env.kubectl("annotate", "secret", env.secret, "-n", env.namespace, "touched=yes")
        with pytest.raises(Conflict):
            await store.replace("Secret", stale)
        with pytest.raises(Conflict):
            fresh = {**stale, "metadata": {"name": env.secret, "namespace": env.namespace}}
            await store.create("Secret", fresh)  # already exists
    finally:
        await api.close()
    print(f"apiserver -> webhook checks: {webhook.checks}")
