"""Waiting with a deadline: the one poll (and its asyncio twin) every test uses."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: object) -> TimeoutError:
    return TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def poll(predicate: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.2, what: str) -> T:
    """predicate() until it returns something truthy, and that value. It is called at least once,
    then every `interval` seconds; after `timeout` seconds, TimeoutError naming `what` and the
    predicate's last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        time.sleep(interval)


@overload
async def poll_async(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str,
) -> T: ...
@overload
async def poll_async(
    predicate: Callable[[], T | None],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str,
) -> T: ...
async def poll_async(
    predicate: Callable[[], Any],
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the whole wait, as poll()'s
    interval: float = 0.005,
    what: str,
) -> Any:
    """poll() without blocking the event loop: the predicate (a plain or an async function) runs
    between asyncio.sleep(interval)s, so the tasks under test make progress meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        await asyncio.sleep(interval)
