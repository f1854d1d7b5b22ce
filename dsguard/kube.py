"""Kubernetes client setup and a list+watch reflector over raw JSON.

The generated kubernetes-asyncio models are slow to build, so lists and watches are read with
_preload_content=False and parsed with orjson into plain dicts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

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
        raise error


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


@dataclass(frozen=True)
class Subscriber:
    """What a Reflector feeds: on_replace(items) after each (re)list, on_event(type, obj) for
    ADDED/MODIFIED/DELETED."""

    on_replace: Callable[[list[Obj]], None]
    on_event: Callable[[str, Obj], None]


class Reflector:
    """Keeps one resource's objects in step with the apiserver and calls back on every change.

    on_replace(items) after each (re)list, on_event(type, obj) for ADDED/MODIFIED/DELETED; or,
    for a watch several readers share, `subscribers`, each called in turn (on_replace/on_event,
    when given, first). `synced` is set after the first complete list.
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
        on_restart: Callable[[str], None] | None = None,
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
        self._on_restart = on_restart or (lambda reason: None)
        self.synced = asyncio.Event()
        self.resource_version = ""
        # When list/watch began failing (time.monotonic()); None while it works. Cleared by the
        # next complete list, so a reader can tell a view that is falling behind.
        self.failing_since: float | None = None
        # Complete lists so far: the first sync and every relist (after a 410 or an error).
        self.lists = 0

    def _replace_all(self, items: list[Obj]) -> None:
        for s in self.subscribers:
            s.on_replace(items)

    def _event_all(self, kind: str, obj: Obj) -> None:
        for s in self.subscribers:
            s.on_event(kind, obj)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._list_all()
                backoff = 0.5
                while True:
                    await self._watch()
            except Gone:
                # not a failure: the watch is too old, the next list catches up at once
                self._on_restart("gone")
                log.info("%s: resourceVersion %s expired, listing again", self.name, self.resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API or the network failed: back off and start over
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self._on_restart("error")
                log.warning(
                    "%s: list/watch failed (%s: %s); retrying in %.1fs",
                    self.name,
                    type(e).__name__,
                    e,
                    backoff,
                )
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
                backoff = min(backoff * 2, 30.0)

    async def _list_all(self) -> None:
        items, self.resource_version = await list_all(self._list, page_size=self._page_size)
        self._on_replace(items)
        self.lists += 1
        self.failing_since = None
        self.synced.set()

    async def _watch(self) -> None:
        resp = await self._list(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=self._watch_timeout + 30,
        )
        try:
            if not 200 <= resp.status <= 299:
                _raise_for_status(resp, await resp.read())
            async for line in _lines(resp.content):
                event = orjson.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    raise RuntimeError(f"unexpected watch event {kind!r}: {str(event)[:200]}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = str(rv)
                if kind != "BOOKMARK":
                    self._on_event(str(kind), obj)
        finally:
            resp.release()


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
