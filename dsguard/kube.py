"""Kubernetes client setup and a list+watch reflector over raw JSON.

The generated kubernetes-asyncio models are slow to build, so lists and watches are read with
_preload_content=False and parsed with orjson into plain dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard import reconnect

log = logging.getLogger("dsguard.kube")

Obj = dict[str, Any]


class ClientConfigError(Exception):
    """The Kubernetes client config can't be loaded; the message (one line) says from where and why."""


async def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from --kubeconfig, $KUBECONFIG, ~/.kube/config, or the in-cluster service account.

    Raises ClientConfigError when that config can't be loaded (a missing or broken file, an
    unknown context, no in-cluster service account). Nothing is sent to the apiserver here.
    """
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if path or _use_default_kubeconfig():
            await config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except Exception as e:  # kubeconfig parsing and in-cluster setup raise several kinds
        where = path or ("~/.kube/config" if _use_default_kubeconfig() else "the in-cluster config")
        detail = " ".join(str(e).split()).rstrip(".") or type(e).__name__
        raise ClientConfigError(f"cannot load the Kubernetes client config from {where}: {detail}") from e
    return client.ApiClient(configuration=cfg)


ListFn = Callable[..., Awaitable[Any]]  # a kubernetes-asyncio list_* method

# Per list request: a blackholed apiserver fails a command instead of hanging it.
REQUEST_TIMEOUT = 60.0

# A watch that has carried nothing, not even a bookmark, for this long is taken as dead (a peer
# gone without a FIN or RST, a dropped NAT entry, a hung apiserver) and opened again from its
# resourceVersion. The apiserver's watch cache sends a bookmark every minute, the first one
# about two minutes into a watch (measured on 1.37: 120 s, then every 60 s).
WATCH_IDLE_TIMEOUT = 150.0

# resource -> (API group class, the list in every namespace (or cluster-scoped), the list in one)
_LISTS: dict[str, tuple[Callable[[client.ApiClient], Any], str, str | None]] = {
    "nodes": (client.CoreV1Api, "list_node", None),
    "namespaces": (client.CoreV1Api, "list_namespace", None),
    "pods": (client.CoreV1Api, "list_pod_for_all_namespaces", "list_namespaced_pod"),
    "daemonsets": (client.AppsV1Api, "list_daemon_set_for_all_namespaces", "list_namespaced_daemon_set"),
    "controllerrevisions": (
        client.AppsV1Api,
        "list_controller_revision_for_all_namespaces",
        "list_namespaced_controller_revision",
    ),
}


def list_scoped(api: client.ApiClient, resource: str, namespace: str | None, **kwargs: Any) -> ListFn:
    """The list call of `resource` in `namespace`, or in every namespace when it is None (-A);
    kwargs (e.g. label_selector) are bound into it. Cluster-scoped resources ignore namespace."""
    group, every, one = _LISTS[resource]
    apis = group(api)
    if namespace is None or one is None:
        return functools.partial(getattr(apis, every), **kwargs)
    return functools.partial(getattr(apis, one), namespace, **kwargs)


class ListError(Exception):
    """A one-shot list failed; the message (one line) names what and why, with a hint when the
    answer suggests one. `status` is the HTTP status (None: no answer, see `unreachable`)."""

    def __init__(self, message: str, *, status: int | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable


async def list_explained(
    what: str,
    call: ListFn,
    *,
    hints: Mapping[int, str] | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
    **kwargs: Any,
) -> list[Obj]:
    """Every item of `call` (list_all), each request bounded by `request_timeout`. Raises ListError: an
    RBAC hint on 401/403, `hints[status]` for other statuses, unreachable=True when the apiserver
    didn't answer (refused, reset, timed out)."""
    try:
        items, _ = await list_all(call, _request_timeout=request_timeout, **kwargs)
    except ApiException as e:
        hint = (hints or {}).get(e.status or 0, "")
        if e.status in (401, 403):
            hint = f"does your user have RBAC to list it? `kubectl auth can-i list {what}`"
        raise ListError(
            f"listing {what} failed: {e.status} {e.reason}" + (f" ({hint})" if hint else ""), status=e.status
        ) from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise ListError(
            f"listing {what} failed: {type(e).__name__}: {e or 'no answer in time'}", unreachable=True
        ) from e
    return items


def _use_default_kubeconfig() -> bool:
    """Outside a pod, ~/.kube/config as kubectl does; inside one, the service account."""
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    return not in_cluster and os.path.exists(os.path.expanduser("~/.kube/config"))


async def raw_body(call: Awaitable[Any]) -> bytes:
    """The body of a kubernetes-asyncio call made with _preload_content=False.

    Such a call returns the raw response whatever its status (the client checks the status only
    when it preloads), so a 403 Forbidden would pass for an empty list: raise ApiException for
    anything but 2xx, with the apiserver's Status as its body.
    """
    resp = await call
    try:
        body: bytes = await resp.read()
    finally:
        resp.release()
    _raise_for_status(resp, body)
    return body


def _raise_for_status(resp: Any, body: bytes) -> None:
    if not 200 <= resp.status <= 299:
        error = ApiException(status=resp.status, reason=resp.reason)
        error.body = body
        error.headers = getattr(resp, "headers", None)  # Retry-After (dsguard.reconnect)
        raise error


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class Throttled(Exception):
    """The apiserver refused the watch with 429 (API Priority and Fairness, or a watch cache
    still initialising): wait, then open the watch again from the same resourceVersion, as
    client-go's reflector does. Listing again would add load where the apiserver asked for less."""

    def __init__(self, message: str, after: float | None) -> None:
        super().__init__(message)
        self.after = after  # seconds its Retry-After or Status retryAfterSeconds asked for


def _status_retry_after(status: Mapping[str, Any]) -> float | None:
    """details.retryAfterSeconds of a metav1.Status, bounded as a Retry-After header is."""
    details = status.get("details")
    seconds = details.get("retryAfterSeconds") if isinstance(details, Mapping) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return min(max(float(seconds), 0.0), reconnect.MAX_RETRY_AFTER)
    return None


@dataclass(frozen=True)
class Subscriber:
    """What a Reflector feeds: on_replace(items) after each (re)list, on_event(type, obj) for
    ADDED/MODIFIED/DELETED."""

    on_replace: Callable[[list[Obj]], None]
    on_event: Callable[[str, Obj], None]


Probe = Callable[[], Awaitable[bool]]
"""Asks an apiserver that stopped answering whether it is back: True to list again, False when it
answers but is not ready yet; raises what a request raises when there is no answer."""


def readyz_probe(api: client.ApiClient) -> Probe:
    """The apiserver's /readyz: green once it serves every resource (CRDs included). Probing the
    resource itself would meet a 503 with Retry-After: 5 from a restarted apiserver that has not
    installed its CRD handlers yet, and back off for seconds after it is ready. /readyz is open to
    every user by default (system:public-info-viewer); where it is not (401, 403, 404) the list
    itself is tried."""

    async def probe() -> bool:
        try:
            await raw_body(
                api.call_api(
                    "/readyz", "GET", auth_settings=["BearerToken"], _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(total=reconnect.PROBE_TIMEOUT),
                )
            )  # fmt: skip
        except ApiException as e:
            return e.status in (401, 403, 404)
        return True

    return probe


class Reflector:
    """Keeps one resource's objects in step with the apiserver and calls back on every change.

    on_replace(items) after each (re)list, on_event(type, obj) for ADDED/MODIFIED/DELETED; or,
    for a watch several readers share, `subscribers`, each called in turn (on_replace/on_event,
    when given, first). `synced` is set after the first complete list.

    A watch silent for `idle_timeout` (no event, no bookmark) is opened again from its
    resourceVersion: a dead connection is found in bounded time, not at the watch's end.
    A watch refused with 429 is opened again from its resourceVersion after a backoff, as
    client-go does (the view counts as failing until then). After any other failure it lists
    again (never resumes a watch: an apiserver that restarted has a new
    watch cache, which would answer an old resourceVersion with 410 anyway), waiting as `retry`
    says (dsguard.reconnect): backing off from errors, probing an apiserver that does not answer
    with `probe` (readyz_probe; by default a limit=1 list of the resource) until it is back.
    `staleness()` says how far behind the view may be; a recovery is logged with how long it was
    down. An expected outage logs warnings, never a traceback.
    """

    def __init__(
        self,
        name: str,
        list_fn: ListFn,
        *,
        on_replace: Callable[[list[Obj]], None] | None = None,
        on_event: Callable[[str, Obj], None] | None = None,
        subscribers: Sequence[Subscriber] = (),
        page_size: int = 500,
        watch_timeout: int = 300,
        idle_timeout: float = WATCH_IDLE_TIMEOUT,
        on_restart: Callable[[str], None] | None = None,
        retry: reconnect.Retry = reconnect.DEFAULT,
        probe: Probe | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if (on_replace is None) != (on_event is None):
            raise TypeError("give on_replace and on_event together (or subscribers)")
        subs = list(subscribers)
        if on_replace is not None and on_event is not None:
            subs.insert(0, Subscriber(on_replace, on_event))
        if not subs:
            raise TypeError(f"reflector {name}: nothing to feed (on_replace/on_event or subscribers)")
        self.name = name
        self._list = list_fn
        self.subscribers = tuple(subs)
        if len(subs) == 1:  # the common case: no fan-out on the hot path
            self._on_replace, self._on_event = subs[0].on_replace, subs[0].on_event
        else:
            self._on_replace, self._on_event = self._replace_all, self._event_all
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._idle_timeout = idle_timeout
        self._on_restart = on_restart or (lambda reason: None)
        self.retry = retry
        self._probe = probe or self._probe_list
        self._monotonic = monotonic
        self.synced = asyncio.Event()
        self.resource_version = ""
        # When list/watch began failing (monotonic); None while it works. Cleared by the next
        # complete list, so a reader can tell a view that is falling behind.
        self.failing_since: float | None = None
        # Current: listed, and the watch since then open (or being reopened after it ended
        # normally). `_current_at`: the last moment the view was known to be current.
        self._current = False
        self._current_at = monotonic()
        # Complete lists so far: the first sync and every relist (after a 410 or an error).
        self.lists = 0

    def _replace_all(self, items: list[Obj]) -> None:
        for s in self.subscribers:
            s.on_replace(items)

    def _event_all(self, kind: str, obj: Obj) -> None:
        for s in self.subscribers:
            s.on_event(kind, obj)

    def staleness(self) -> float:
        """Seconds the view may be behind the apiserver: 0 while the watch is open after a
        complete list; otherwise since it was last known current (since start before the first
        list). The webhook's and the guard's watch staleness metrics."""
        if self._current:
            return 0.0
        return max(0.0, self._monotonic() - self._current_at)

    async def run(self) -> None:
        errors = 0  # answered errors in a row: the backoff's exponent
        while True:
            try:
                await self._list_all()
                errors = 0
                await self._watch_until_it_fails()
            except Gone:
                # not a failure: the watch is too old, the next list catches up at once
                self._left_current()
                self._on_restart("gone")
                log.info("%s: resourceVersion %s expired, listing again", self.name, self.resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API or the network failed: wait as `retry` says and start over
                self._left_current()
                first = self.failing_since is None
                if first:
                    self.failing_since = self._monotonic()
                self._on_restart("error")
                failure = reconnect.classify(e)
                what = f"{type(e).__name__}: {_one_line(e)}"
                if failure is reconnect.Failure.UNREACHABLE and self.retry.probe_every is not None:
                    if first:
                        low, high = self.retry.probe_every
                        log.warning(
                            "%s: list/watch lost, the apiserver does not answer (%s); "
                            "probing it every %g-%gs and listing again once it answers",
                            self.name, what, low, high,
                        )  # fmt: skip
                    else:
                        log.debug("%s: list/watch failed (%s); probing", self.name, what)
                    await self._probe_until_answered()
                    errors = 0  # a server that was gone starts with a fresh backoff
                    continue
                after = reconnect.retry_after(e) if self.retry.retry_after else None
                delay = self.retry.backoff(errors, after=after)
                errors += 1
                log.warning(
                    "%s: list/watch failed (%s); retrying in %.1fs%s",
                    self.name, what, delay, " (Retry-After)" if after is not None else "",
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _watch_until_it_fails(self) -> None:
        """Watch, opening the watch again each time it ends; after a 429, wait as for an answered
        error (Retry-After honoured) and reopen it from the same resourceVersion: no relist. The
        view counts as failing (the guard decides nothing) until the watch is open again."""
        throttled = 0  # 429s in a row: the backoff's exponent
        while True:
            try:
                await self._watch()
                throttled = 0
            except Throttled as e:
                self._left_current()
                if self.failing_since is None:
                    self.failing_since = self._monotonic()
                self._on_restart("throttled")
                after = e.after if self.retry.retry_after else None
                delay = self.retry.backoff(throttled, after=after)
                throttled += 1
                log.warning(
                    "%s: the watch was throttled (%s); opening it again from resourceVersion %s "
                    "in %.1fs%s",
                    self.name, _one_line(e), self.resource_version, delay,
                    " (Retry-After)" if after is not None else "",
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _probe_until_answered(self) -> None:
        """`probe` on a short jittered interval until the apiserver says it is back (or answers
        a list probe at all: with an error, the list then meets it and backs off)."""
        probes = 0
        while True:
            await asyncio.sleep(self.retry.probe_interval())
            probes += 1
            try:
                if await self._probe():
                    log.debug("%s: the apiserver is back (probe %d); listing", self.name, probes)
                    return
                log.debug("%s: probe %d: the apiserver answers, not ready yet", self.name, probes)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if reconnect.classify(e) is not reconnect.Failure.UNREACHABLE:
                    return
                log.debug("%s: probe %d: no answer (%s)", self.name, probes, type(e).__name__)

    async def _probe_list(self) -> bool:
        """A limit=1 list of the resource: the access the reflector has anyway. Any answer will do:
        with an error, the list meets it and backs off."""
        with contextlib.suppress(ApiException):
            await raw_body(
                self._list(
                    limit=1,
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(total=reconnect.PROBE_TIMEOUT),
                )
            )
        return True

    def _left_current(self) -> None:
        if self._current:
            self._current = False
            self._current_at = self._monotonic()

    async def _list_all(self) -> None:
        items, self.resource_version = await list_all(
            self._list, page_size=self._page_size, _request_timeout=_list_timeout()
        )
        self._on_replace(items)
        self.lists += 1
        now = self._monotonic()
        if self.failing_since is not None:
            log.warning(
                "%s: listed again (%d objects) after %.1fs without a current view",
                self.name, len(items), now - min(self.failing_since, self._current_at),
            )  # fmt: skip
        self.failing_since = None
        self._current, self._current_at = True, now
        self.synced.set()

    async def _watch(self) -> None:
        resp = await self._list(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=self._watch_timeout + 30,
                sock_connect=reconnect.CONNECT_TIMEOUT,
                sock_read=self._idle_timeout,
            ),
        )
        try:
            if resp.status == 429:
                after = reconnect.retry_after_header(getattr(resp, "headers", None))
                raise Throttled(f"HTTP 429 {resp.reason or ''}".strip(), after)
            if not 200 <= resp.status <= 299:
                _raise_for_status(resp, await resp.read())
            if not self._current:  # reopened after going silent or throttled: it resumes where it was
                now = self._monotonic()
                if self.failing_since is not None:  # set only by a 429 once listed
                    log.warning(
                        "%s: watching again from resourceVersion %s after %.1fs throttled",
                        self.name, self.resource_version, now - self.failing_since,
                    )  # fmt: skip
                    self.failing_since = None
                self._current, self._current_at = True, now
            try:
                await self._read_events(resp)
            except aiohttp.SocketTimeoutError:
                self._left_current()
                self._on_restart("idle")
                log.info(
                    "%s: the watch carried nothing for %gs (not even a bookmark); opening it again "
                    "from resourceVersion %s",
                    self.name, self._idle_timeout, self.resource_version,
                )  # fmt: skip
        finally:
            resp.release()

    async def _read_events(self, resp: Any) -> None:
        async for line in _lines(resp.content):
            event = orjson.loads(line)
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone()
                if obj.get("code") == 429:
                    raise Throttled(f"watch error 429: {obj.get('message', '')}", _status_retry_after(obj))
                raise RuntimeError(f"watch error: {obj.get('message', obj)}")
            if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                raise RuntimeError(f"unexpected watch event {kind!r}: {str(event)[:200]}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = str(rv)
            if kind != "BOOKMARK":
                self._on_event(str(kind), obj)


def _list_timeout() -> aiohttp.ClientTimeout:
    """Per list page: a blackholed apiserver fails the list instead of hanging it."""
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=reconnect.CONNECT_TIMEOUT)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or "no answer in time"


async def list_all(list_fn: ListFn, *, page_size: int = 500, **kwargs: Any) -> tuple[list[Obj], str]:
    """Every item of a list call as plain dicts, read in pages; and the list's resourceVersion."""
    items: list[Obj] = []
    cont: str | None = None
    while True:
        args: dict[str, Any] = {**kwargs, "limit": page_size, "_preload_content": False}
        if cont:
            args["_continue"] = cont
        data = orjson.loads(await raw_body(list_fn(**args)))
        items.extend(data.get("items") or [])
        meta = data.get("metadata") or {}
        cont = meta.get("continue")
        if not cont:
            return items, str(meta.get("resourceVersion", ""))


async def _lines(stream: Any) -> AsyncIterator[bytes]:
    """Watch events, one JSON document a line. aiohttp's own line iterator caps line length,
    and a Node with many images in its status can exceed it, so split here."""
    buf = bytearray()
    async for chunk in stream.iter_any():
        buf += chunk
        while (i := buf.find(b"\n")) >= 0:
            line = bytes(buf[:i])
            del buf[: i + 1]
            if line.strip():
                yield line
    if buf.strip():
        yield bytes(buf)


class _Page:
    """A list response that was already read (and cut down): what Reflector needs of one."""

    status = 200
    reason = "OK"

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass


def slim_lists(list_fn: Callable[..., Awaitable[Any]], slim: Callable[[Obj], Obj | None]) -> Any:
    """list_fn for a Reflector, whose list pages carry only what `slim` keeps of each item.

    A Reflector holds every item of a (re)list until the last page is in. 5,000 Nodes and 5,000
    Pods as the API sends them (managedFields, specs, every condition) took the guard to ~290 MiB
    at 5,000 nodes; cut down page by page they are a few hundred bytes each. Watch responses
    pass through: their objects come one at a time. A failed list raises ApiException (raw_body)
    before anything is cut, as the Reflector's own check would.
    """

    async def call(**kwargs: Any) -> Any:
        if kwargs.get("watch"):
            return await list_fn(**kwargs)
        data = orjson.loads(await raw_body(list_fn(**kwargs)))
        data["items"] = [s for s in map(slim, data.get("items") or ()) if s is not None]
        return _Page(orjson.dumps(data))

    return call


def name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("name", ""))
