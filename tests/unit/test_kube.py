"""The list+watch reflector's edges: HTTP errors must not pass for data (a 403 is not an empty list)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from dsguard.kube import Reflector
from tests.support.polling import poll_async


class FakeResponse:
    def __init__(self, status: int, body: bytes, lines: list[bytes] | None = None) -> None:
        self.status = status
        self.reason = {200: "OK", 403: "Forbidden"}.get(status, "")
        self._body = body
        self.content = self
        # an error's Status body is what a watch stream carries, once, and then it ends
        self._lines = lines if lines is not None else ([body] if status != 200 else [])
        self._ends = status != 200

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass

    async def iter_any(self) -> Any:
        for line in self._lines:
            yield line
        if not self._ends:
            await asyncio.Event().wait()  # a watch that stays open


FORBIDDEN = orjson.dumps(
    {"kind": "Status", "code": 403, "message": 'namespaces is forbidden: User "x" cannot list'}
)


async def run_briefly(r: Reflector, until: asyncio.Event | None = None) -> None:
    task = asyncio.create_task(r.run())
    try:
        if until is not None:
            await asyncio.wait_for(until.wait(), timeout=5)
        else:
            await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_forbidden_list_is_an_error_not_an_empty_sync() -> None:
    restarts: list[str] = []
    replaced: list[list[Any]] = []
    seen = asyncio.Event()

    async def list_fn(**kwargs: Any) -> FakeResponse:
        seen.set()
        return FakeResponse(403, FORBIDDEN)

    r = Reflector("namespaces", list_fn, on_replace=replaced.append, on_event=lambda k, o: None,
                  on_restart=restarts.append)  # fmt: skip
    await run_briefly(r, seen)
    await asyncio.sleep(0.05)
    assert not r.synced.is_set()
    assert replaced == []
    assert restarts and restarts[0] == "error"


async def test_forbidden_watch_backs_off_instead_of_spinning() -> None:
    calls = {"list": 0, "watch": 0}
    events: list[str] = []

    async def list_fn(**kwargs: Any) -> FakeResponse:
        await asyncio.sleep(0)  # let the test's timer run even if the reflector spins
        if kwargs.get("watch"):
            calls["watch"] += 1
            return FakeResponse(403, FORBIDDEN)
        calls["list"] += 1
        return FakeResponse(200, orjson.dumps({"items": [], "metadata": {"resourceVersion": "7"}}))

    r = Reflector("nodes", list_fn, on_replace=lambda items: None, on_event=lambda k, o: events.append(k))
    await run_briefly(r)
    assert r.synced.is_set()
    assert events == []  # no phantom events from an error body
    assert calls["watch"] <= 2  # backed off (0.25s-0.75s), not ~thousands of retries


async def test_watch_events_are_delivered_and_bookmarks_move_the_resource_version() -> None:
    got: list[tuple[str, str]] = []
    done = asyncio.Event()
    lines = [
        orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "n1", "resourceVersion": "8"}}})
        + b"\n",
        orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}) + b"\n",
    ]

    async def list_fn(**kwargs: Any) -> FakeResponse:
        if kwargs.get("watch"):
            return FakeResponse(200, b"", lines)
        return FakeResponse(200, orjson.dumps({"items": [], "metadata": {"resourceVersion": "7"}}))

    def on_event(kind: str, obj: Any) -> None:
        got.append((kind, obj["metadata"]["name"]))
        done.set()

    r = Reflector("nodes", list_fn, on_replace=lambda items: None, on_event=on_event)
    await run_briefly(r, done)
    await asyncio.sleep(0.05)
    assert got == [("ADDED", "n1")]
    assert r.resource_version == "9"


async def test_failing_since_marks_a_view_falling_behind_until_the_next_complete_list() -> None:
    """`dsguard status --watch` tells the user when what it shows is no longer current."""
    fail = asyncio.Event()
    fail.set()
    failed, listed_again = asyncio.Event(), asyncio.Event()

    async def list_fn(**kwargs: Any) -> FakeResponse:
        if fail.is_set():
            failed.set()
            return FakeResponse(403, FORBIDDEN)
        if not kwargs.get("watch"):
            listed_again.set()
        return FakeResponse(200, orjson.dumps({"items": [], "metadata": {"resourceVersion": "9"}}))

    r = Reflector("pods", list_fn, on_replace=lambda items: None, on_event=lambda k, o: None)
    assert r.failing_since is None
    task = asyncio.create_task(r.run())
    try:
        await asyncio.wait_for(failed.wait(), timeout=5)
        # the reflector handles the error it got
        await poll_async(lambda: r.failing_since is not None, what="the reflector to record the failure")
        assert not r.synced.is_set()
        fail.clear()  # the apiserver answers again: the retry (after its backoff) lists
        await asyncio.wait_for(listed_again.wait(), timeout=5)
        await poll_async(lambda: r.synced.is_set(), what="the reflector to sync again")
        assert r.failing_since is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
