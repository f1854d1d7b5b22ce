"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

The holder renews `renewTime` every `retry` seconds; another replica takes the lease over once
`renewTime + leaseDurationSeconds` has passed. Updates carry the Lease's resourceVersion, so two
candidates can't both win the same round. A leader that can't renew within the lease duration
steps down before anyone else may take over (renew deadline < lease duration).
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

log = logging.getLogger("dsguard.guard.leader")


def _micro(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _parse(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value).timestamp()
    return None


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
        self.leading = False
        self._last_renew = 0.0

    def is_leader(self) -> bool:
        # Step down on our own clock before the lease can expire for the others.
        return self.leading and time.monotonic() - self._last_renew < self.renew_deadline

    async def run(self) -> None:
        while True:
            try:
                acquired = await self._try_acquire_or_renew()
            except ApiException as e:
                log.warning("lease %s/%s: %s %s", self.namespace, self.name, e.status, e.reason)
                acquired = False
            except (OSError, TimeoutError, aiohttp.ClientError) as e:
                # ClientError: a disconnect mid-request (an apiserver restarting) is no OSError
                log.warning("lease %s/%s: %s: %s", self.namespace, self.name, type(e).__name__, e)
                acquired = False
            if acquired:
                self._last_renew = time.monotonic()
            self._set(self.is_leader() if not acquired else True)
            await asyncio.sleep(self.retry)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.warning(
                "%s leadership of %s/%s", "acquired" if leading else "lost", self.namespace, self.name
            )
            self.on_change(leading)

    async def _try_acquire_or_renew(self) -> bool:
        now = time.time()
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
                    acquire_time=_micro(now),
                    renew_time=_micro(now),
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
        holder = spec.holder_identity or ""
        renewed = _parse(spec.renew_time) or 0.0
        duration = spec.lease_duration_seconds or int(self.lease_duration)
        if holder and holder != self.identity and renewed + duration > now:
            return False  # held by a live leader
        if holder != self.identity:
            spec.holder_identity = self.identity
            spec.acquire_time = _micro(now)
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.renew_time = _micro(now)
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
            lease = await self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = _micro(time.time() - self.lease_duration)
                await self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except (ApiException, OSError) as e:
            log.warning("releasing lease failed: %s", e)
        self._set(False)
