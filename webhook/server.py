"""The admission webhook over HTTPS: /mutate, /validate, /healthz, /readyz, /metrics.

The server only does HTTP. `serve_admission` is a plain function (bytes in, status and bytes
out) so its behaviour is tested without sockets; the aiohttp handlers wrap it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dsguard.cluster_cache import ClusterCache
from dsguard.lifecycle import cancel_and_wait, wait_for_shutdown_signal
from dsguard.log_context import ObjectRef, about
from dsguard.rules import engine
from webhook import review
from webhook.connections import ConnectionGate, ConnectionLimits, GuardedConnection
from webhook.metrics import Metrics
from webhook.mutation import hold_then_mutate
from webhook.tls import CertReloader
from webhook.verdict_memo import VerdictMemo

log = logging.getLogger("dsguard.webhook")


class _ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a request it can't parse (a malformed head, a bad chunk) as an ERROR with a
    traceback, though it answers 400: the client's mistake, not ours. One INFO line instead, so
    a hostile client can't flood the log with tracebacks; real errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | web.RequestPayloadError):
            log.info("bad request from a client, answered 400: %s", _one_line(exc))
            return False
        return True


_CLIENT_ERRORS = _ClientErrorsInOneLine()

Endpoint = Literal["mutate", "validate"]

# The apiserver refuses request bodies over 3 MiB (MaxRequestBodyBytes in
# k8s.io/apiserver/pkg/server/config.go); an UPDATE review carries the object and the old object.
MAX_BODY_BYTES = 2 * 3 * 1024 * 1024 + 1024 * 1024


@dataclass
class WebhookState:
    cache: ClusterCache
    metrics: Metrics = field(default_factory=Metrics)
    # Users whose DaemonSet changes pass unjudged: the rollout guard's service account, whose
    # rollback restores an older template and whose resume restores the old strategy, which a
    # policy added since might deny, and which must not be blocked mid-incident.
    exempt_users: frozenset[str] = frozenset()
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    gate: ConnectionGate | None = None  # set by run(): the listening socket's connection counter
    # Repeated reviews (GitOps re-applies) answered without running the rules again.
    memo: VerdictMemo = field(default_factory=VerdictMemo)


STATE = web.AppKey("state", WebhookState)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _bad_request(message: str) -> tuple[int, bytes]:
    # A metav1.Status, as the apiserver answers its own bad requests; "error" for older clients.
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400}
    return 400, orjson.dumps({**status, "message": message, "error": message})


def serve_admission(state: WebhookState, endpoint: Endpoint, body: bytes) -> tuple[int, bytes, str]:
    """Answer one AdmissionReview body: (HTTP status, response body, verdict label)."""
    try:
        req = review.decode(body)
    except review.BadReview as e:
        status, out = _bad_request(f"malformed AdmissionReview: {e}")
        return status, out, "bad_request"
    # Only DaemonSet CREATE/UPDATE are judged; the webhook configuration should send nothing else.
    if not req.is_daemonset or req.operation not in ("CREATE", "UPDATE") or req.object is None:
        return 200, review.encode(req.uid, allowed=True), "allowed"
    # Every line logged while judging it names it (--log-format json: `object`).
    with about(ObjectRef.of("DaemonSet", req.ref)):
        return _judge(state, endpoint, req, req.object, body)


def _judge(
    state: WebhookState,
    endpoint: Endpoint,
    req: review.AdmissionRequest,
    obj: Mapping[str, Any],
    body: bytes,
) -> tuple[int, bytes, str]:
    if req.username in state.exempt_users:
        log.info("exempt: %s %s DaemonSet %s unjudged", req.username, req.operation, req.ref)
        return 200, review.encode(req.uid, allowed=True), "exempt"

    cache = state.cache
    policies, facts = cache.policies, cache.facts
    previous = req.old_object if req.operation == "UPDATE" else None
    memo = partial(state.memo.evaluate, endpoint, body, req.uid, policies=policies, facts=facts)
    if endpoint == "mutate":
        # The mutating side never denies: /validate judges the final object, after every mutation.
        # Fields it can't read are left untouched; the apiserver's validation names them.
        mutated = memo(
            compute=lambda: hold_then_mutate(
                policies,
                obj,
                facts=facts,
                namespace=req.namespace,
                old=previous,
                errors=req.object_errors,
                old_errors=req.old_object_errors,
            )
        )
        verdict = "patched" if mutated.patch else "warned" if mutated.unreadable else "allowed"
        notices = [*mutated.notices, *(f"dsguard left it unchanged: {e}" for e in mutated.unreadable)]
        return (
            200,
            review.encode(req.uid, allowed=True, patch=mutated.patch, warnings=notices),
            verdict,
        )
    result = memo(
        compute=lambda: engine.judge(
            policies, obj, facts=facts, namespace=req.namespace, old=previous, shape_errors=req.object_errors
        )
    )
    # Audits are recorded by /validate only: it sees the final object, and each review once.
    for a in result.audits:
        state.metrics.audits.labels(a.policy, a.rule).inc()
        log.info("audit: DaemonSet %s: %s", result.ds.ref, a)
    if not result.allowed:
        log.info(
            "denied DaemonSet %s (%s, dryRun=%s): %s",
            result.ds.ref,
            req.operation,
            req.dry_run,
            "; ".join(str(d) for d in result.denials),
        )
        return (
            200,
            review.encode(
                req.uid, allowed=False, message=result.denial_message(), code=403, warnings=result.warnings
            ),
            "denied",
        )
    verdict = "warned" if result.warnings else "allowed"
    return 200, review.encode(req.uid, allowed=True, warnings=result.warnings), verdict


def _review_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        start = time.perf_counter()
        close = False
        # The raw header first: aiohttp's parsed content_type costs ~3 µs a request; what the
        # apiserver sends is exactly this, and anything else still gets the full parse.
        if (
            request.headers.get(hdrs.CONTENT_TYPE) != "application/json"
            and request.content_type != "application/json"
        ):
            status, out = _bad_request(f"Content-Type must be application/json, got {request.content_type!r}")
            verdict = "bad_request"
        elif request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            status, out = _bad_request(
                f"body of {request.content_length} bytes is over the {MAX_BODY_BYTES}-byte limit"
            )
            verdict = "bad_request"
        else:
            body: bytes | None = None
            try:
                if request.content.is_eof():  # all of it came with the head: nothing to wait for
                    body = await request.read()
                else:
                    async with asyncio.timeout(state.limits.read_timeout):
                        body = await request.read()
            except TimeoutError:  # a client trickling its body: it gets its connection closed
                close = True
                state.metrics.read_timeouts.labels("body").inc()
                status, out = (
                    408,
                    orjson.dumps({"error": f"body not received within {state.limits.read_timeout:g}s"}),
                )
            except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length to check first
                status, out = _bad_request(f"body is over the {MAX_BODY_BYTES}-byte limit")
            except (web.RequestPayloadError, HttpProcessingError) as e:
                # The body can't be read as declared (Content-Encoding gzip/deflate that isn't,
                # a chunked or length error): aiohttp drops the connection after such an error
                # without saying so, so say it (Connection: close), and answer why. The body is
                # done with: aiohttp would otherwise try to drain it and hit the error again.
                close = True
                request.content.feed_eof()
                status, out = _bad_request(
                    f"body can't be read as sent ({_one_line(e)}); send the JSON "
                    "AdmissionReview uncompressed, or compressed as its Content-Encoding says"
                )
            if body is None:
                verdict = "bad_request"
            else:
                try:
                    status, out, verdict = serve_admission(state, endpoint, body)
                except Exception:  # a bug of ours: answer 500 so failurePolicy applies, and say which review
                    log.exception("review failed on %s", endpoint)
                    status, out, verdict = (
                        500,
                        orjson.dumps({"error": "internal error; see the webhook log"}),
                        "error",
                    )
        metrics = state.metrics
        bound = metrics.review_counters.get((endpoint, verdict))
        (bound or metrics.reviews.labels(endpoint, verdict)).inc()
        metrics.latencies[endpoint].observe(time.perf_counter() - start)
        response = web.Response(status=status, body=out, content_type="application/json")
        if close:
            response.force_close()
        return response

    return handle


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    cache = request.app[STATE].cache
    if cache.synced:
        # Ready on a stale cache too (docs/install.md, "When the apiserver is away"): every
        # replica watches the same apiserver, so not-ready would take all of them out at once
        # and hand every DaemonSet write to failurePolicy instead of to the last known policies.
        stale = [f"{r.name} {r.staleness():.0f}s" for r in cache.reflectors if r.failing_since is not None]
        return web.Response(text="ok" + (f" (cache not current: {', '.join(stale)})" if stale else ""))
    pending = [r.name for r in cache.reflectors if not r.synced.is_set()]
    return web.Response(
        status=503, text=f"waiting for the first sync of: {', '.join(pending) or 'server version'}"
    )


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cache = state.cache
    state.metrics.policies.set(len(cache.policies))
    state.metrics.policy_errors.set(len(cache.policy_errors))
    state.metrics.nodes.set(len(cache.facts.nodes))
    state.metrics.ready.set(1 if cache.synced else 0)
    if state.gate is not None:
        state.metrics.connections.set(state.gate.connections)
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def cycle_requests(server: web.Server) -> None:
    """Tell each connection's guard when a request head arrived (its header timer stops) and when
    the request is done (the next head is timed from its first byte): wraps the server's request
    handler, the application's routing included, so the 404s and 405s aiohttp answers itself are
    told too. Not a middleware: aiohttp's middleware chain (and the _fix_request_current_app it
    adds) cost ~5 µs a review."""
    handle = server.request_handler

    async def cycled(request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        conn = transport.get_protocol() if transport is not None else None
        if not isinstance(conn, GuardedConnection):
            return await handle(request)
        conn.request_started()
        try:
            return await handle(request)
        finally:
            conn.request_finished()

    server.request_handler = cycled


def make_app(state: WebhookState) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    aiohttp_server_log = logging.getLogger("aiohttp.server")
    if _CLIENT_ERRORS not in aiohttp_server_log.filters:
        aiohttp_server_log.addFilter(_CLIENT_ERRORS)
    app[STATE] = state
    state.cache.on_restart = lambda resource, reason: state.metrics.watch_restarts.labels(
        resource, reason
    ).inc()
    state.metrics.count_memo(lambda: (state.memo.hits, state.memo.misses))
    for reflector in state.cache.reflectors:
        state.metrics.watch_staleness.labels(reflector.name).set_function(reflector.staleness)
    app.router.add_post("/mutate", _review_handler("mutate"))
    app.router.add_post("/validate", _review_handler("validate"))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def run(
    state: WebhookState,
    *,
    ssl_context: ssl.SSLContext,
    reloader: CertReloader | None,
    host: str,
    port: int,
    tasks: list[asyncio.Task[None]] | None = None,
    shutdown_timeout: float = 10.0,
) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, let reviews in flight finish, stop watches."""
    app = make_app(state)
    limits = state.limits
    runner = web.AppRunner(
        app, shutdown_timeout=shutdown_timeout, access_log=None, keepalive_timeout=limits.idle_timeout
    )
    await runner.setup()
    assert runner.server is not None
    cycle_requests(runner.server)
    # Plain TCP at the socket: the gate admits by the caps, then upgrades to TLS (connections.py).
    state.gate = ConnectionGate(limits, runner.server, ssl_context, state.metrics)
    listener = await asyncio.get_running_loop().create_server(state.gate, host, port, backlog=1024)
    log.info(
        "serving on https://%s:%d (at most %d connections, %d per client; TLS handshake %gs, "
        "request head %gs, body %gs, idle %gs)",
        host, port, limits.max_connections, limits.max_connections_per_client, limits.tls_handshake_timeout,
        limits.read_header_timeout, limits.read_timeout, limits.idle_timeout,
    )  # fmt: skip
    background_tasks = list(tasks or [])
    if reloader is not None:
        background_tasks.append(asyncio.create_task(reloader.run()))
    try:
        await wait_for_shutdown_signal()
    finally:
        log.info("shutting down")
        listener.close()  # stop accepting; runner.cleanup lets the reviews in flight finish
        await runner.cleanup()
        await cancel_and_wait(background_tasks)
