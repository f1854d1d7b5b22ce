"""Leader election's edges (guard/leader.py) against an in-memory Lease: a leader that can't renew
steps down within its renew deadline whatever the failure (an error, a reset, a request that never
answers), counting from the start of its last renewal; a follower judges the holder's lease on its
own clock (client-go's observedTime), never on the holder's renewTime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from guard.leader import LeaderElector

LEASE = "guard"
NS = "dsguard"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCoord:
    """read/create/replace of one Lease, with optimistic concurrency; `fail` makes every call raise
    (or, for "hang", never answer); `on_read` runs inside each read (a slow network)."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.rv = 0
        self.fail: BaseException | str | None = None
        self.on_read: Callable[[], None] = lambda: None

    async def _maybe_fail(self) -> None:
        if self.fail == "hang":
            await asyncio.Event().wait()
        if isinstance(self.fail, BaseException):
            raise self.fail

    def _copy(self) -> client.V1Lease:
        assert self.lease is not None
        spec = self.lease.spec
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name=LEASE, namespace=NS, resource_version=str(self.rv)),
            spec=client.V1LeaseSpec(
                holder_identity=spec.holder_identity, lease_duration_seconds=spec.lease_duration_seconds,
                acquire_time=spec.acquire_time, renew_time=spec.renew_time,
                lease_transitions=spec.lease_transitions,
            ),
        )  # fmt: skip

    async def read_namespaced_lease(self, name: str, namespace: str) -> client.V1Lease:
        await self._maybe_fail()
        self.on_read()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return self._copy()

    async def create_namespaced_lease(self, namespace: str, body: client.V1Lease) -> None:
        await self._maybe_fail()
        if self.lease is not None:
            raise ApiException(status=409, reason="Conflict")
        self.lease, self.rv = body, self.rv + 1

    async def replace_namespaced_lease(self, name: str, namespace: str, body: client.V1Lease) -> None:
        await self._maybe_fail()
        if body.metadata.resource_version != str(self.rv):
            raise ApiException(status=409, reason="Conflict")
        self.lease, self.rv = body, self.rv + 1

    def hold_by(self, holder: str, renewed: datetime, duration: int = 15) -> None:
        t = client.V1Lease(
            metadata=client.V1ObjectMeta(name=LEASE, namespace=NS),
            spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=duration,
                                    acquire_time=renewed, renew_time=renewed, lease_transitions=1),
        )  # fmt: skip
        self.lease, self.rv = t, self.rv + 1


def elector(
    coord: FakeCoord,
    clock: Callable[[], float] = time.monotonic,
    changes: list[bool] | None = None,
    **kw: Any,
) -> LeaderElector:
    e = LeaderElector(
        client.ApiClient(), namespace=NS, name=LEASE, identity="me",
        on_change=(changes.append if changes is not None else lambda leading: None), clock=clock,
        **{"lease_duration": 15.0, "renew_deadline": 10.0, "retry": 2.0, **kw},
    )  # fmt: skip
    e.coord = coord  # type: ignore[assignment]
    return e


@pytest.mark.parametrize(
    "failure",
    [
        ApiException(status=500, reason="Internal Server Error"),
        ApiException(status=429, reason="Too Many Requests"),
        aiohttp.ServerDisconnectedError(),  # a reset mid-request: not an OSError
        aiohttp.ClientConnectionError("connection closed"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
    ],
    ids=["500", "429", "disconnected", "closed", "reset", "timeout"],
)
async def test_a_leader_that_cannot_renew_steps_down_at_its_renew_deadline(failure: BaseException) -> None:
    coord, clock, changes = FakeCoord(), FakeClock(), list[bool]()
    e = elector(coord, clock, changes)
    assert await e.step() is True
    coord.fail = failure
    clock.now += 9.9
    assert await e.step() is True, "still inside the renew deadline"
    assert e.is_leader()
    clock.now += 0.2
    assert e.is_leader() is False, "acting must stop at the deadline, not at the next attempt"
    assert await e.step() is False  # never raises: the election goes on
    assert changes == [True, False]


async def test_a_request_that_never_answers_cannot_keep_a_leader_leading() -> None:
    coord, changes = FakeCoord(), list[bool]()
    e = elector(coord, changes=changes, lease_duration=1.5, renew_deadline=1.0, retry=0.1)
    assert await e.step() is True
    coord.fail = "hang"  # a blackholed connection: no reset, no answer
    t0 = time.monotonic()
    assert await asyncio.wait_for(e.step(), timeout=5) is False
    assert time.monotonic() - t0 < 1.5, "the attempt must be bounded by what is left of the deadline"
    assert changes == [True, False]


async def test_the_term_counts_from_the_start_of_a_slow_renewal_not_its_answer() -> None:
    coord, clock = FakeCoord(), FakeClock()
    e = elector(coord, clock)
    assert await e.step() is True
    start = clock.now + 2.0
    clock.now = start

    def slow() -> None:
        clock.now += 4.0  # the renewal's answer comes 4s after it was sent

    coord.on_read = slow
    assert await e.step() is True
    clock.now = start + 9.9
    assert e.is_leader()
    clock.now = start + 10.0  # 6s after the answer, but 10s after the renewTime the others saw
    assert not e.is_leader()


def _ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "renewed",
    [_ago(3600), _ago(-3600), _ago(0)],
    ids=["holder-clock-behind", "holder-clock-ahead", "in-step"],
)
async def test_a_follower_waits_a_lease_duration_on_its_own_clock(renewed: datetime) -> None:
    coord, clock = FakeCoord(), FakeClock()
    coord.hold_by("other", renewed)
    e = elector(coord, clock)
    assert await e.step() is False, "a lease first seen now runs for its duration from now"
    clock.now += 14.9
    assert await e.step() is False
    clock.now += 0.2
    assert await e.step() is True
    assert coord.lease is not None
    assert coord.lease.spec.holder_identity == "me"
    assert coord.lease.spec.lease_transitions == 2


async def test_a_renewing_holder_keeps_the_follower_out() -> None:
    coord, clock = FakeCoord(), FakeClock()
    e = elector(coord, clock)
    for i in range(10):
        coord.hold_by("other", _ago(0) + timedelta(seconds=i))  # renewed every 2s
        assert await e.step() is False
        clock.now += 2.0
    clock.now += 13.0  # 15s after the last renewal was seen
    assert await e.step() is True


async def test_a_released_lease_is_taken_at_once_and_a_lost_race_is_no_win() -> None:
    coord, clock = FakeCoord(), FakeClock()
    coord.hold_by("", _ago(60))
    e = elector(coord, clock)
    real_replace = coord.replace_namespaced_lease

    async def racing(name: str, namespace: str, body: client.V1Lease) -> None:
        coord.hold_by("other", _ago(0))  # another candidate wrote first
        await real_replace(name, namespace, body)

    coord.replace_namespaced_lease = racing  # type: ignore[method-assign]
    assert await e.step() is False
    coord.replace_namespaced_lease = real_replace  # type: ignore[method-assign]
    coord.hold_by("", _ago(60))
    assert await e.step() is True
