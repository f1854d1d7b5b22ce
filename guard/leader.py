"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

The holder renews `renewTime` every `retry` seconds; another replica takes the lease over once it
has seen the same lease record, unchanged, for `leaseDurationSeconds` on its own clock (client-go's
observedTime: no trust in the holder's wall clock). Updates carry the Lease's resourceVersion, so
two candidates can't both win the same round.

A leader that can't renew steps down before anyone else may take over: it counts its term from
the *start* of its last successful renewal (the others' clocks start no earlier than that) and
stops acting `renew_deadline` seconds later (renew deadline < lease duration). Every attempt is
bounded by what is left of that deadline, as client-go bounds it with a context, so a request
hung on a dead connection can't keep a cut-off leader believing it leads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.log_context import ObjectRef, object_extra

log = logging.getLogger("dsguard.guard.leader")


def _micro(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry: float = 2.0,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry < renew_deadline < lease_duration:
            raise ValueError("need retry < renew_deadline < lease_duration")
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry = retry
        self.on_change = on_change
        self.clock = clock
        self.leading = False
        self._lease = object_extra(ObjectRef("Lease", name, namespace))  # names it in JSON logs
        self._term_start = 0.0  # clock() at the start of the last successful acquire or renew
        # The lease record as last read, and clock() when it last changed (client-go's
        # observedRecord/observedTime): the holder's lease runs from when *we* saw it renewed.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    def is_leader(self) -> bool:
        # Step down on our own clock before the lease can expire for the others.
        return self.leading and self.clock() - self._term_start < self.renew_deadline

    def _attempt_timeout(self) -> float:
        """How long one acquire/renew may take: while leading, what is left of the renew deadline
        (an answer after that could not keep us leading anyway); otherwise the renew deadline."""
        if self.leading:
            return max(self._term_start + self.renew_deadline - self.clock(), 0.05)
        return self.renew_deadline

    async def step(self) -> bool:
        """One acquire-or-renew attempt, bounded in time; whether this replica leads after it."""
        started = self.clock()
        try:
            acquired = await asyncio.wait_for(self._try_acquire_or_renew(started), self._attempt_timeout())
        except ApiException as e:
            log.warning(
                "lease %s/%s: %s %s", self.namespace, self.name, e.status, e.reason, extra=self._lease
            )
            acquired = False
        except TimeoutError:
            log.warning(
                "lease %s/%s: no answer from the apiserver in time",
                self.namespace,
                self.name,
                extra=self._lease,
            )
            acquired = False
        except (OSError, aiohttp.ClientError) as e:  # refused, reset, disconnected
            log.warning(
                "lease %s/%s: %s: %s", self.namespace, self.name, type(e).__name__, e, extra=self._lease
            )
            acquired = False
        if acquired:
            self._term_start = started
        self._set(True if acquired else self.is_leader())
        return self.leading

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.retry)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.warning(
                "%s leadership of %s/%s",
                "acquired" if leading else "lost",
                self.namespace,
                self.name,
                extra=self._lease,
            )
            self.on_change(leading)

    def _held_by_another(self, spec: Any, now: float) -> bool:
        holder = spec.holder_identity or ""
        if not holder or holder == self.identity:
            return False
        record = (holder, str(spec.renew_time), str(spec.acquire_time), spec.lease_transitions,
                  spec.lease_duration_seconds)  # fmt: skip
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.lease_duration_seconds or self.lease_duration
        return bool(self._observed_at + duration > now)

    async def _try_acquire_or_renew(self, started: float) -> bool:
        wall = time.time()
        try:
            lease = await self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=int(self.lease_duration),
                    acquire_time=_micro(wall),
                    renew_time=_micro(wall),
                    lease_transitions=0,
                ),
            )
            try:
                await self.coord.create_namespaced_lease(self.namespace, body)
            except ApiException as ce:
                if ce.status == 409:
                    return False  # someone else created it first
                raise
            return True
        spec = lease.spec
        if self._held_by_another(spec, started):
            return False  # held by a live leader
        if (spec.holder_identity or "") != self.identity:
            spec.holder_identity = self.identity
            spec.acquire_time = _micro(wall)
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.renew_time = _micro(wall)
        spec.lease_duration_seconds = int(self.lease_duration)
        try:
            await self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            if e.status == 409:
                return False  # lost the race for this round
            raise
        return True

    async def release(self) -> None:
        """On clean shutdown, let the next replica take over at once instead of after the lease expires."""
        if not self.leading:
            return
        try:
            lease = await asyncio.wait_for(
                self.coord.read_namespaced_lease(self.name, self.namespace), self.renew_deadline
            )
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = _micro(time.time() - self.lease_duration)
                await asyncio.wait_for(
                    self.coord.replace_namespaced_lease(self.name, self.namespace, lease), self.renew_deadline
                )
        except (ApiException, OSError, TimeoutError, aiohttp.ClientError) as e:
            log.warning("releasing lease failed: %s", e, extra=self._lease)
        self._set(False)
