"""The webhook over real HTTPS: AdmissionReviews in, verdicts, patches, errors and metrics out.

Each test starts the aiohttp app on 127.0.0.1 (port 0) with the server's own SSLContext
(webhook.tls.server_context) and talks to it with a client that trusts only a throwaway CA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jsonpatch
import orjson
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from dsguard.cluster_cache import ClusterCache
from dsguard.kube import Reflector
from dsguard.scheduling import NodeInfo
from tests.support.builders import daemonset, node, parsed_policy
from tests.support.polling import poll_async
from tests.support.tls import TLSFiles, write_private, write_serving, write_tls_files
from webhook.connections import ConnectionLimits
from webhook.server import MAX_BODY_BYTES, WebhookState, make_app, serve_admission
from webhook.tls import CertReloader, server_context

Endpoint = Literal["mutate", "validate"]
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]

DS_KIND = {"group": "apps", "version": "v1", "kind": "DaemonSet"}
DS_RESOURCE = {"group": "apps", "version": "v1", "resource": "daemonsets"}
INFRA_TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
TOLERATIONS_FIELD = "spec.template.spec.tolerations"

# One policy per namespace, so each test picks its behaviour by where its DaemonSet lives.
ADD_NS, DENY_NS, WARN_NS, AUDIT_NS = "agents", "strict", "warned", "audited"


# --- AdmissionReview payloads -------------------------------------------------------------------


#: DaemonSet node-agent (labelled app=node-agent unless given labels) in the namespace given first.
node_agent = partial(
    daemonset, "node-agent", image="registry.example.com/node-agent:1.4.2", app_label=True, max_unavailable=1,
    max_surge=0,
)  # fmt: skip


def admission_review(
    *,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    operation: Operation = "CREATE",
    uid: str = "0b7e3c1a-6f1d-4f4e-9d3b-5c2a1e8f9a01",
    kind: dict[str, str] = DS_KIND,
    resource: dict[str, str] = DS_RESOURCE,
    sub_resource: str = "",
    namespace: str | None = None,
) -> dict[str, Any]:
    some = obj if obj is not None else old
    meta = some["metadata"] if some is not None else {}
    request: dict[str, Any] = {
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": meta.get("name", ""),
        "namespace": namespace if namespace is not None else meta.get("namespace", ""),
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "dryRun": False,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    if obj is not None:
        request["object"] = obj
    if old is not None:
        request["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    patch = orjson.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(patch, list)
    return patch


# --- the cluster the server sees ------------------------------------------------------------------


#: The infra toleration required (Deny when missing) for every node; POLICIES: one per namespace.
REQUIRE_INFRA: dict[str, Any] = {
    "enforcement": "Enforce",
    "tolerations": {"required": [INFRA_TOLERATION], "onMissing": "Deny", "coverage": {"nodeSelector": {}}},
}
ADD_INFRA = {**REQUIRE_INFRA, "tolerations": {**REQUIRE_INFRA["tolerations"], "onMissing": "Add"}}
POLICIES = (
    parsed_policy("add-infra-toleration", ADD_INFRA, namespaces=[ADD_NS]),
    parsed_policy("require-infra-toleration", REQUIRE_INFRA, namespaces=[DENY_NS]),
    parsed_policy("warn-infra-toleration", {**REQUIRE_INFRA, "enforcement": "Warn"}, namespaces=[WARN_NS]),
    parsed_policy("audit-infra-toleration", {**REQUIRE_INFRA, "enforcement": "Audit"}, namespaces=[AUDIT_NS]),
)


#: Linux nodes on kubelet v1.33.1 (untainted unless said otherwise), as the apiserver serves them.
_node = partial(node, labels={"kubernetes.io/os": "linux"}, hostname_label=True, taints=[], kubelet="v1.33.1")


NODES = (
    _node("worker-1"),
    _node("infra-1", taints=[{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
)


def static_cache() -> ClusterCache:
    cache = ClusterCache(static_policies=POLICIES)
    cache.use_static_facts([NodeInfo.from_node(n) for n in NODES], "v1.33.1")
    return cache


# --- the server and its client --------------------------------------------------------------------


def client_context(tls: TLSFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=tls.ca_pem.decode())


@dataclass
class Webhook:
    server: TestServer
    session: aiohttp.ClientSession
    state: WebhookState
    ssl_context: ssl.SSLContext  # the server's

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def post_raw(
        self, endpoint: Endpoint, data: Any, content_type: str = "application/json"
    ) -> tuple[int, str, bytes]:
        async with self.session.post(
            self.url(f"/{endpoint}"), data=data, headers={"Content-Type": content_type}
        ) as r:
            return r.status, r.content_type, await r.read()

    async def review(self, endpoint: Endpoint, payload: dict[str, Any]) -> dict[str, Any]:
        """POST an AdmissionReview, check the envelope, return its response."""
        status, content_type, body = await self.post_raw(endpoint, orjson.dumps(payload))
        assert status == 200, body
        assert content_type == "application/json"
        doc = orjson.loads(body)
        assert doc["apiVersion"] == "admission.k8s.io/v1"
        assert doc["kind"] == "AdmissionReview"
        assert doc["response"]["uid"] == payload["request"]["uid"]
        response: dict[str, Any] = doc["response"]
        return response

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url(path)) as r:
            return r.status, await r.text()

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = await self.get("/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@contextlib.asynccontextmanager
async def running_webhook(tls: TLSFiles, cache: ClusterCache) -> AsyncIterator[Webhook]:
    state = WebhookState(cache=cache)
    ctx = server_context(tls.cert_file, tls.key_file)
    server = TestServer(make_app(state), host="127.0.0.1", port=0)
    await server.start_server(ssl=ctx)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(tls))) as session:
            yield Webhook(server=server, session=session, state=state, ssl_context=ctx)
    finally:
        await server.close()


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    return write_tls_files(tmp_path / "tls")


@pytest.fixture
async def webhook(tls: TLSFiles) -> AsyncIterator[Webhook]:
    async with running_webhook(tls, static_cache()) as w:
        yield w


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- mutate and validate --------------------------------------------------------------------------


async def test_mutate_adds_the_missing_toleration_and_validate_accepts_the_result(webhook: Webhook) -> None:
    original = node_agent(ADD_NS)
    response = await webhook.review("mutate", admission_review(obj=original, uid="uid-mutate-1"))
    assert response["allowed"] is True
    assert "status" not in response
    patch = decoded_patch(response)
    assert any("added toleration" in w for w in response["warnings"])

    patched = jsonpatch.apply_patch(original, patch)
    assert patched["spec"]["template"]["spec"]["tolerations"] == [INFRA_TOLERATION]
    assert original["spec"]["template"]["spec"].get("tolerations") is None  # the patch is input -> output

    # /validate judges what the apiserver would store: the unpatched object is denied, the patched allowed.
    unpatched = await webhook.review("validate", admission_review(obj=original, uid="uid-validate-0"))
    assert unpatched["allowed"] is False
    assert "should have added them" in unpatched["status"]["message"]
    accepted = await webhook.review("validate", admission_review(obj=patched, uid="uid-validate-1"))
    assert accepted == {"uid": "uid-validate-1", "allowed": True}

    again = await webhook.review("mutate", admission_review(obj=patched, uid="uid-mutate-2"))
    assert again == {"uid": "uid-mutate-2", "allowed": True}  # idempotent: no patch, no notices


async def test_validate_denies_with_403_naming_policy_field_and_fix(webhook: Webhook) -> None:
    response = await webhook.review("validate", admission_review(obj=node_agent(DENY_NS)))
    assert response["allowed"] is False
    assert "patch" not in response
    status = response["status"]
    assert status["code"] == 403
    assert status["reason"] == "Forbidden"
    message = status["message"]
    assert f"DaemonSet {DENY_NS}/node-agent" in message
    assert 'DaemonSetPolicy "require-infra-toleration" (tolerations)' in message
    assert f"{TOLERATIONS_FIELD}: missing required toleration(s)" in message
    assert "key: dedicated, operator: Equal, value: infra, effect: NoSchedule" in message
    assert f"add them to {TOLERATIONS_FIELD}" in message  # the fix
    # Coverage names the node the DaemonSet would miss and the taint to tolerate.
    assert 'DaemonSetPolicy "require-infra-toleration" (coverage)' in message
    assert "infra-1" in message
    assert "tolerate dedicated=infra:NoSchedule" in message


async def test_warn_enforcement_allows_with_warnings(webhook: Webhook) -> None:
    response = await webhook.review("validate", admission_review(obj=node_agent(WARN_NS)))
    assert response["allowed"] is True
    assert "status" not in response
    warnings_ = response["warnings"]
    assert any(w.startswith('DaemonSetPolicy "warn-infra-toleration" (tolerations)') for w in warnings_)
    assert any(TOLERATIONS_FIELD in w for w in warnings_)


async def test_audit_enforcement_allows_silently_and_counts_the_finding(webhook: Webhook) -> None:
    labels = {"policy": "audit-infra-toleration", "rule": "tolerations"}
    before = metric(await webhook.metrics(), "dsguard_webhook_audit_findings_total", **labels)
    response = await webhook.review("validate", admission_review(obj=node_agent(AUDIT_NS), uid="uid-audit"))
    assert response == {"uid": "uid-audit", "allowed": True}
    after = await webhook.metrics()
    assert metric(after, "dsguard_webhook_audit_findings_total", **labels) == before + 1
    coverage = {"policy": "audit-infra-toleration", "rule": "coverage"}
    assert metric(after, "dsguard_webhook_audit_findings_total", **coverage) == 1


async def test_update_with_unchanged_template_is_allowed_with_a_warning(webhook: Webhook) -> None:
    old = node_agent(DENY_NS)
    new = node_agent(DENY_NS, labels={"app": "node-agent", "team": "observability"})  # metadata only
    response = await webhook.review("validate", admission_review(obj=new, old=old, operation="UPDATE"))
    assert response["allowed"] is True
    assert "status" not in response
    assert any(
        w.startswith('DaemonSetPolicy "require-infra-toleration" (tolerations)') and "not enforced" in w
        for w in response["warnings"]
    )


async def test_update_that_changes_the_template_is_denied(webhook: Webhook) -> None:
    old = node_agent(DENY_NS)
    new = node_agent(DENY_NS, image="registry.example.com/node-agent:1.5.0")
    response = await webhook.review("validate", admission_review(obj=new, old=old, operation="UPDATE"))
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert 'DaemonSetPolicy "require-infra-toleration" (tolerations)' in response["status"]["message"]


def _untouched_cases(namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
    ds = node_agent(namespace)
    deployment = {**node_agent(namespace), "kind": "Deployment"}
    yield (
        "deployment",
        admission_review(
            obj=deployment,
            kind={"group": "apps", "version": "v1", "kind": "Deployment"},
            resource={"group": "apps", "version": "v1", "resource": "deployments"},
        ),
    )
    yield "status-subresource", admission_review(obj=ds, old=ds, operation="UPDATE", sub_resource="status")
    yield "delete", admission_review(obj=None, old=ds, operation="DELETE")
    yield "connect", admission_review(obj=None, operation="CONNECT", namespace=namespace)


# Each object would be patched (agents) or denied (strict) were it a DaemonSet CREATE.
@pytest.mark.parametrize("endpoint,namespace", [("mutate", ADD_NS), ("validate", DENY_NS)])
async def test_other_kinds_subresources_delete_and_connect_pass_untouched(
    webhook: Webhook, endpoint: Endpoint, namespace: str
) -> None:
    control = await webhook.review(endpoint, admission_review(obj=node_agent(namespace)))
    assert "patch" in control or control["allowed"] is False
    for case, payload in _untouched_cases(namespace):
        uid = f"uid-{case}"
        payload["request"]["uid"] = uid
        response = await webhook.review(endpoint, payload)
        assert response == {"uid": uid, "allowed": True}, case


# --- bad input ------------------------------------------------------------------------------------


def _review_bytes(edit: Callable[[dict[str, Any]], object]) -> bytes:
    doc = admission_review(obj=node_agent(DENY_NS), old=node_agent(DENY_NS), operation="UPDATE")
    edit(doc)
    return orjson.dumps(doc)


def _create_without_object(doc: dict[str, Any]) -> None:
    doc["request"]["operation"] = "CREATE"
    del doc["request"]["object"]


async def _oversized_chunks() -> AsyncIterator[bytes]:
    chunk = b" " * (1024 * 1024)
    for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
        yield chunk


@dataclass(frozen=True)
class BadInput:
    case: str
    body: Callable[[], object]  # bytes, or an async iterator (sent chunked, with no Content-Length)
    expected: str  # in the JSON error
    content_type: str = "application/json"


BAD_INPUTS = [
    BadInput(
        "malformed-json", lambda: b'{"apiVersion": "admission.k8s.io/v1", "kind": ', "body is not valid JSON"
    ),
    BadInput("json-array", lambda: b"[]", "body must be a JSON object (AdmissionReview), got list"),
    BadInput(
        "v1beta1",
        lambda: _review_bytes(lambda d: d.update(apiVersion="admission.k8s.io/v1beta1")),
        "got apiVersion 'admission.k8s.io/v1beta1'",
    ),
    BadInput(
        "wrong-kind",
        lambda: _review_bytes(lambda d: d.update(kind="AdmissionRequest")),
        "kind 'AdmissionRequest'",
    ),
    BadInput("missing-request", lambda: _review_bytes(lambda d: d.pop("request")), "request is missing"),
    BadInput(
        "missing-uid", lambda: _review_bytes(lambda d: d["request"].pop("uid")), "request.uid is missing"
    ),
    BadInput(
        "create-without-object",
        lambda: _review_bytes(_create_without_object),
        "request.object is missing for a CREATE",
    ),
    BadInput(
        "update-without-old-object",
        lambda: _review_bytes(lambda d: d["request"].pop("oldObject")),
        "request.oldObject is missing for an UPDATE",
    ),
    BadInput(
        "text-plain",
        lambda: _review_bytes(lambda d: None),
        "Content-Type must be application/json, got 'text/plain'",
        content_type="text/plain",
    ),
    BadInput(
        "too-large-content-length",
        lambda: b" " * (MAX_BODY_BYTES + 1),
        f"body of {MAX_BODY_BYTES + 1} bytes is over the {MAX_BODY_BYTES}-byte limit",
    ),
    BadInput("too-large-chunked", _oversized_chunks, f"body is over the {MAX_BODY_BYTES}-byte limit"),
]


@pytest.mark.parametrize("endpoint", ["validate", "mutate"])
async def test_bad_input_is_a_400_with_a_json_error_and_the_server_keeps_serving(
    webhook: Webhook, endpoint: Endpoint
) -> None:
    for bad in BAD_INPUTS:
        status, response_type, body = await webhook.post_raw(endpoint, bad.body(), bad.content_type)
        assert status == 400, (bad.case, status, body)
        assert response_type == "application/json", bad.case
        error = orjson.loads(body)["error"]
        assert bad.expected in error, (bad.case, error)
        # Still serving, and still judging.
        payload = admission_review(obj=node_agent(DENY_NS), uid=f"uid-after-{bad.case}")
        assert (await webhook.review("validate", payload))["allowed"] is False, bad.case
    samples = await webhook.metrics()
    reviews = "dsguard_webhook_reviews_total"
    assert metric(samples, reviews, endpoint=endpoint, verdict="bad_request") == len(BAD_INPUTS)
    assert metric(samples, reviews, endpoint=endpoint, verdict="error") == 0
    if endpoint == "mutate":
        assert metric(samples, reviews, endpoint="validate", verdict="bad_request") == 0


# --- health, readiness, metrics -------------------------------------------------------------------


async def test_healthz(webhook: Webhook) -> None:
    assert await webhook.get("/healthz") == (200, "ok")


async def test_readyz_waits_for_the_server_version(tls: TLSFiles) -> None:
    async with running_webhook(tls, ClusterCache(static_policies=POLICIES)) as w:
        status, text = await w.get("/readyz")
        assert status == 503
        assert "server version" in text


class _WatchStream:
    """A watch that never sends an event (it blocks until the reflector is cancelled)."""

    async def iter_any(self) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""  # pragma: no cover


class _FakeResponse:
    status = 200
    reason = "OK"

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._body = orjson.dumps({"items": items, "metadata": {"resourceVersion": "42"}})
        self.content = _WatchStream()

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass


def _fake_list(items: list[dict[str, Any]], gate: asyncio.Event) -> Callable[..., Awaitable[_FakeResponse]]:
    async def list_fn(**kwargs: Any) -> _FakeResponse:
        await gate.wait()
        return _FakeResponse(items)

    return list_fn


async def test_readyz_is_503_until_every_reflector_has_synced(tls: TLSFiles) -> None:
    cache = ClusterCache(static_policies=POLICIES)
    cache.use_static_facts([], "v1.33.1")  # the server version; the reflectors bring the nodes
    nodes_listed, open_gate = asyncio.Event(), asyncio.Event()
    open_gate.set()
    cache.reflectors = [
        Reflector(
            "nodes",
            _fake_list(list(NODES), nodes_listed),
            on_replace=cache.replace_nodes,
            on_event=cache.node_event,
        ),
        Reflector(
            "namespaces",
            _fake_list([{"metadata": {"name": DENY_NS}}], open_gate),
            on_replace=cache.replace_namespaces,
            on_event=cache.namespace_event,
        ),
    ]
    async with running_webhook(tls, cache) as w:
        tasks = [asyncio.create_task(r.run()) for r in cache.reflectors]
        try:
            assert (await w.get("/readyz"))[0] == 503
            assert metric(await w.metrics(), "dsguard_webhook_ready") == 0

            async def only_nodes_pending() -> bool:
                return await w.get("/readyz") == (503, "waiting for the first sync of: nodes")

            await poll_async(only_nodes_pending, what="/readyz to wait for nodes only")
            nodes_listed.set()

            async def ready() -> bool:
                return await w.get("/readyz") == (200, "ok")

            await poll_async(ready, what="/readyz to turn 200")
            assert metric(await w.metrics(), "dsguard_nodes") == len(NODES)
            assert metric(await w.metrics(), "dsguard_webhook_ready") == 1
            assert metric(await w.metrics(), "dsguard_watch_staleness_seconds", resource="nodes") == 0
            # a watch lost later: still ready (docs/install.md), and it says which is not current
            cache.reflectors[0].failing_since = time.monotonic()
            status, body = await w.get("/readyz")
            assert status == 200 and body.startswith("ok (cache not current: nodes "), body
            assert metric(await w.metrics(), "dsguard_webhook_ready") == 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_metrics_count_reviews_by_endpoint_and_verdict_with_latency(webhook: Webhook) -> None:
    await webhook.review("validate", admission_review(obj=node_agent(DENY_NS)))
    await webhook.review("validate", admission_review(obj=node_agent(DENY_NS)))
    await webhook.review("validate", admission_review(obj=node_agent(WARN_NS)))
    await webhook.review("mutate", admission_review(obj=node_agent(ADD_NS)))
    await webhook.review("mutate", admission_review(obj=node_agent("elsewhere")))
    await webhook.post_raw("validate", b"[]")
    samples = await webhook.metrics()
    reviews = "dsguard_webhook_reviews_total"
    assert metric(samples, reviews, endpoint="validate", verdict="denied") == 2
    assert metric(samples, reviews, endpoint="validate", verdict="warned") == 1
    assert metric(samples, reviews, endpoint="validate", verdict="bad_request") == 1
    assert metric(samples, reviews, endpoint="mutate", verdict="patched") == 1
    assert metric(samples, reviews, endpoint="mutate", verdict="allowed") == 1
    latency = "dsguard_webhook_review_duration_seconds"
    assert metric(samples, f"{latency}_count", endpoint="validate") == 4
    assert metric(samples, f"{latency}_count", endpoint="mutate") == 2
    assert metric(samples, f"{latency}_bucket", endpoint="validate", le="+Inf") == 4
    assert 0 < metric(samples, f"{latency}_sum", endpoint="validate") < 4.0
    assert metric(samples, "dsguard_policies") == len(POLICIES)
    assert metric(samples, "dsguard_nodes") == len(NODES)


# --- TLS ------------------------------------------------------------------------------------------


async def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, int]:
    """A fresh TLS connection: (protocol version, serial of the server's certificate)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        return str(sslobj.version()), x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


def _legacy_client(tls: TLSFiles) -> ssl.SSLContext:
    """A client that offers TLS 1.0/1.1 only (OpenSSL 3 needs security level 0 for them)."""
    ctx = client_context(tls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def test_tls_1_1_is_refused_and_tls_1_2_is_served(webhook: Webhook, tls: TLSFiles) -> None:
    legacy = _legacy_client(tls)
    # Control: the legacy client does speak TLS 1.1 to a server that allows it...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        lax.minimum_version = ssl.TLSVersion.TLSv1
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.load_cert_chain(tls.cert_file, tls.key_file)
    lax_server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=lax)
    try:
        assert (await _handshake(lax_server.sockets[0].getsockname()[1], legacy))[0] == "TLSv1.1"
    finally:
        lax_server.close()
        await lax_server.wait_closed()
    # ...and the webhook refuses it.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(webhook.port, legacy)

    tls12 = client_context(tls)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(webhook.port, tls12) == ("TLSv1.2", tls.serial)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls12)) as session:
        response = await session.post(
            webhook.url("/validate"),
            data=orjson.dumps(admission_review(obj=node_agent(DENY_NS), uid="uid-tls12")),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200
        assert (await response.json())["response"]["uid"] == "uid-tls12"


async def test_cert_reloader_serves_a_rewritten_certificate(webhook: Webhook, tls: TLSFiles) -> None:
    client = client_context(tls)
    reloader = CertReloader(webhook.ssl_context, tls.cert_file, tls.key_file)
    assert (await _handshake(webhook.port, client))[1] == tls.serial
    assert reloader.check() is False  # nothing changed

    renewed = tls.ca.issue()
    write_serving(tls.cert_file, tls.key_file, renewed)
    assert reloader.check() is True
    assert (await _handshake(webhook.port, client))[1] == renewed.serial
    assert await webhook.get("/healthz") == (200, "ok")  # the pooled connection still works


# A writer that replaces the files in place (not by symlink swap) is caught between the two writes.
@pytest.mark.parametrize("new_cert", [pytest.param(False, id="key-only"), pytest.param(True, id="new-cert")])
async def test_cert_reloader_keeps_the_old_cert_while_the_key_is_half_written(
    webhook: Webhook, tls: TLSFiles, new_cert: bool
) -> None:
    client = client_context(tls)
    reloader = CertReloader(webhook.ssl_context, tls.cert_file, tls.key_file)
    renewed = tls.ca.issue()
    if new_cert:
        tls.cert_file.write_bytes(renewed.cert_pem)
    write_private(tls.key_file, renewed.key_pem[: len(renewed.key_pem) // 2])
    assert reloader.check() is False
    assert reloader.reloads == 0
    assert await _handshake(webhook.port, client) == ("TLSv1.3", tls.serial)

    write_serving(tls.cert_file, tls.key_file, renewed)  # the writer finishes
    assert reloader.check() is True
    assert (await _handshake(webhook.port, client))[1] == renewed.serial


def test_exempt_users_pass_unjudged_and_others_do_not() -> None:
    """The rollout guard's rollback may restore a template a later policy denies; it must get through."""
    guard_sa = "system:serviceaccount:dsguard:dsguard-guard"
    state = WebhookState(cache=static_cache(), exempt_users=frozenset({guard_sa}))
    review = admission_review(obj=node_agent(DENY_NS))
    status, body, verdict = serve_admission(state, "validate", orjson.dumps(review))
    assert (status, verdict) == (200, "denied")
    review["request"]["userInfo"]["username"] = guard_sa
    status, body, verdict = serve_admission(state, "validate", orjson.dumps(review))
    response = orjson.loads(body)["response"]
    assert (status, verdict, response["allowed"]) == (200, "exempt", True)
    assert "patch" not in response


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_not_compressed_as_its_content_encoding_says_is_a_400_closing_the_connection(
    webhook: Webhook, encoding: str
) -> None:
    body = orjson.dumps(admission_review(obj=node_agent(DENY_NS)))
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    async with webhook.session.post(webhook.url("/validate"), data=body, headers=headers) as r:
        status, connection, doc = r.status, r.headers.get("Connection"), orjson.loads(await r.read())
    assert status == 400, doc
    assert connection == "close"  # aiohttp drops the connection after a payload error: say so
    assert doc["kind"] == "Status" and doc["reason"] == "BadRequest", doc
    assert "Content-Encoding" in doc["message"], doc
    # Still serving, and still judging.
    payload = admission_review(obj=node_agent(DENY_NS), uid="uid-after-bad-encoding")
    assert (await webhook.review("validate", payload))["allowed"] is False
    samples = await webhook.metrics()
    assert metric(samples, "dsguard_webhook_reviews_total", endpoint="validate", verdict="bad_request") == 1


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        ("whole", 200),  # all of it with the head: read without arming the timer
        ("half", 408),  # the rest never comes: the read timeout still holds
    ],
)
async def test_the_body_read_timeout_applies_to_a_body_still_arriving(
    webhook: Webhook, tls: TLSFiles, sent: str, status: int
) -> None:
    webhook.state.limits = ConnectionLimits(read_timeout=0.5)
    body = orjson.dumps(admission_review(obj=node_agent(DENY_NS)))
    head = (
        f"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", webhook.port, ssl=client_context(tls))
    try:
        writer.write(head + (body if sent == "whole" else body[: len(body) // 2]))
        await writer.drain()
        async with asyncio.timeout(10):
            line = await reader.readline()
        assert line.split()[1] == str(status).encode(), line
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),  # what the apiserver sends: the raw header's fast path
        ("application/json; charset=utf-8", 200),  # parameters: the parsed media type decides
        ("Application/JSON", 200),  # media types are case-insensitive
        ("application/jsonx", 400),
        ("text/json", 400),
        ("", 400),
    ],
)
async def test_the_content_type_must_be_json_in_any_spelling_of_it(
    webhook: Webhook, content_type: str, status: int
) -> None:
    body = orjson.dumps(admission_review(obj=node_agent(DENY_NS), uid="uid-ctype"))
    got, _, answer = await webhook.post_raw("validate", body, content_type)
    assert got == status, answer
    if status == 400:
        assert b"Content-Type must be application/json" in answer
