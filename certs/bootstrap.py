"""The thin I/O around `certs.rotate.plan`: read the objects, plan, write, and do it again in a loop.

Writes are conditional: a create fails if the object appeared meanwhile, an update carries the
resourceVersion that was read, so two loops (or a loop and a person) never overwrite each other's
CA; the loser of a race re-reads and plans again. Responses are read raw (`_preload_content=False`),
so the Kubernetes client's debug log never prints a Secret, and nothing here logs key material:
only the writes' reasons, which describe certificates by name, serial and fingerprint.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from certs.bundle import MUTATING, VALIDATING, WebhookKind, with_ca_bundle
from certs.rotate import (
    ConfigRef,
    Observed,
    Plan,
    Settings,
    Write,
    config_lookups,
    missing_config_message,
    plan,
)

log = logging.getLogger("dsguard.certs")

Obj = dict[str, Any]
Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]

MIN_ROUND_GAP = 1.0  # seconds between rounds that wrote something: let the writes settle
MAX_BACKOFF = 300.0


class Conflict(Exception):
    """The object changed (or appeared, or vanished) since it was read: read again and re-plan."""


class StoreError(Exception):
    """The API refused or failed a request, for another reason than a conflict."""


class Store(Protocol):
    """Get, create and conditionally replace Secrets and webhook configurations."""

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None: ...

    async def create(self, kind: str, body: Obj) -> Obj: ...

    async def replace(self, kind: str, body: Obj) -> Obj: ...


def _name_ns(body: Mapping[str, Any]) -> tuple[str, str | None]:
    meta = body.get("metadata") or {}
    return str(meta.get("name", "")), meta.get("namespace")


class KubeStore:
    """A Store over a kubernetes-asyncio ApiClient, raw JSON in and out."""

    def __init__(self, api: Any) -> None:
        from kubernetes_asyncio import client

        self._core = client.CoreV1Api(api)
        self._admission = client.AdmissionregistrationV1Api(api)

    def _method(self, verb: str, kind: str) -> tuple[Callable[..., Awaitable[Any]], bool]:
        """The client method for verb/kind and whether it is namespaced."""
        if kind == "Secret":
            return getattr(self._core, f"{verb}_namespaced_secret"), True
        suffix = {MUTATING: "mutating", VALIDATING: "validating"}.get(kind)
        if suffix is None:
            raise ValueError(f"unsupported kind {kind}")
        return getattr(self._admission, f"{verb}_{suffix}_webhook_configuration"), False

    async def _call(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Obj | None:
        """Call with a raw response; the parsed object, None on 404, Conflict on 409."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            resp = await fn(*args, _preload_content=False, _request_timeout=30, **kwargs)
            try:
                body = await resp.read()
            finally:
                resp.release()
        except ApiException as e:  # raised before a response, e.g. bad arguments
            raise StoreError(f"{what}: {e.reason}") from None
        except (TimeoutError, OSError, aiohttp.ClientError) as e:
            raise StoreError(f"{what}: {type(e).__name__}: {e}") from None
        if 200 <= resp.status < 300:
            obj: Obj = orjson.loads(body)
            return obj
        if resp.status == 404:
            return None
        try:
            message = str(orjson.loads(body).get("message", ""))
        except (orjson.JSONDecodeError, AttributeError):
            message = body[:200].decode(errors="replace")
        if resp.status == 409:
            raise Conflict(f"{what}: {message}")
        raise StoreError(f"{what}: HTTP {resp.status}: {message}")

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        fn, namespaced = self._method("read", kind)
        args = (name, namespace) if namespaced else (name,)
        return await self._call(f"get {kind} {name}", fn, *args)

    async def create(self, kind: str, body: Obj) -> Obj:
        fn, namespaced = self._method("create", kind)
        name, namespace = _name_ns(body)
        args = (namespace, body) if namespaced else (body,)
        out = await self._call(f"create {kind} {name}", fn, *args)
        if out is None:  # the namespace is missing
            raise StoreError(f"create {kind} {name}: namespace {namespace} not found")
        return out

    async def replace(self, kind: str, body: Obj) -> Obj:
        fn, namespaced = self._method("replace", kind)
        name, namespace = _name_ns(body)
        args = (name, namespace, body) if namespaced else (name, body)
        out = await self._call(f"update {kind} {name}", fn, *args)
        if out is None:
            raise Conflict(f"update {kind} {name}: it was deleted meanwhile")
        return out


# --- one round -------------------------------------------------------------------------------------


async def observe(store: Store, settings: Settings) -> Observed:
    configs: dict[tuple[WebhookKind, str], Obj | None] = {}
    for kind, name in config_lookups(settings):
        configs[(kind, name)] = await store.get(kind, name)
    return Observed(
        ca_secret=await store.get("Secret", settings.ca_secret, settings.namespace),
        tls_secret=await store.get("Secret", settings.secret, settings.namespace),
        configs=configs,
    )


async def execute(store: Store, writes: Sequence[Write], done: list[Write] | None = None) -> list[Write]:
    """Apply the writes in order, stopping at the first failure (Conflict or StoreError propagate).

    Each write that succeeded is appended to `done` (also when a later one fails) and returned."""
    done = [] if done is None else done
    for w in writes:
        if w.create:
            await store.create(w.kind, w.body)
        else:
            await store.replace(w.kind, w.body)
        log.info("%s", w)
        done.append(w)
    return done


@dataclass
class Round:
    plan: Plan
    done: list[Write] = field(default_factory=list)
    conflict: str = ""  # a write lost a race: re-plan soon

    @property
    def converged(self) -> bool:
        """Nothing was left to write (the state may still be waiting for time to pass)."""
        return not self.plan.writes and not self.conflict


async def reconcile_once(store: Store, settings: Settings, now: dt.datetime) -> Round:
    """Observe, plan at `now`, execute. Conflicts are reported in the Round, other errors raise."""
    obs = await observe(store, settings)
    p = plan(obs, settings, now)
    for e in p.errors:
        log.error("%s", e)
    for n in p.notes:
        log.info("%s", n)
    r = Round(p)
    try:
        await execute(store, p.writes, r.done)
    except Conflict as e:
        r.conflict = str(e)
        log.info("conflict, planning again: %s", e)
    return r


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def run(
    store: Store,
    settings: Settings,
    *,
    interval: float = 3600.0,
    once: bool = False,
    clock: Clock = _utcnow,
    sleep: Sleep = asyncio.sleep,
    max_once_rounds: int = 5,
) -> int:
    """Reconcile until cancelled, at least every `interval` seconds and whenever the plan says
    something is due (a renewal, the end of a propagation delay or grace period).

    With once: run rounds until one has nothing to write (a step that must wait is left for the
    next run) and return 0, or 1 on errors (a missing webhook configuration, a failing API).
    """
    failures = 0
    rounds = 0
    while True:
        rounds += 1
        try:
            r = await reconcile_once(store, settings, clock())
        except StoreError as e:
            failures += 1
            log.error("%s", e)
            if once:
                return 1
            await sleep(min(MAX_BACKOFF, interval, 2.0**failures))
            continue
        failures = 0
        if once:
            if r.converged or rounds >= max_once_rounds:
                for n in r.plan.notes:
                    log.info("left for a later run: %s", n)
                return 1 if r.plan.errors or not r.converged else 0
            continue
        if r.conflict or r.done:
            await sleep(MIN_ROUND_GAP)
            continue
        due = (r.plan.next_check - clock()).total_seconds()
        await sleep(max(MIN_ROUND_GAP, min(interval, due)))


# --- one-shot injection ----------------------------------------------------------------------------


async def inject(
    store: Store, refs: Sequence[ConfigRef], bundle_pem: bytes, *, now: dt.datetime, attempts: int = 5
) -> list[str]:
    """Set `bundle_pem` as the caBundle of every webhook of the referenced configurations.

    Returns what was done, one line per configuration; raises StoreError naming a missing one.
    """
    out = []
    for ref in refs:
        touched = False
        for kind in ref.kinds:
            for _ in range(attempts):
                obj = await store.get(kind, ref.name)
                if obj is None:
                    break
                touched = True
                try:
                    await store.replace(kind, with_ca_bundle(obj, bundle_pem, now=now))
                except Conflict:
                    continue
                out.append(f"{kind} {ref.name}: caBundle set on {len(obj.get('webhooks') or [])} webhook(s)")
                break
            else:
                raise StoreError(f"{kind} {ref.name}: still conflicting after {attempts} attempts")
        if not touched:
            raise StoreError(missing_config_message(ref))
    return out
