"""The list+watch reflector's edges: HTTP errors must not pass for data (a 403 is not an empty list)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kubernetes_asyncio import client

from dsguard.kube import ListError, Reflector, Subscriber, list_explained, list_scoped
from tests.support.polling import poll_async


class FakeResponse:
    def __init__(self, status: int, body: bytes, lines: list[bytes] | None = None) -> None:
        self.status = status
        self.reason = {200: "OK", 403: "Forbidden", 404: "Not Found"}.get(status, "")
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


async def until(condition: Callable[[], bool]) -> None:
    """Until condition() holds (poll_async, 5 s)."""
    await poll_async(lambda: condition() or None, what="the condition")


# --- one-shot lists: one scope switch, one error wording -------------------------------------------


@pytest.mark.parametrize(
    ("resource", "namespace", "method", "args"),
    [
        ("pods", None, "list_pod_for_all_namespaces", ()),
        ("pods", "logging", "list_namespaced_pod", ("logging",)),
        ("daemonsets", None, "list_daemon_set_for_all_namespaces", ()),
        ("daemonsets", "logging", "list_namespaced_daemon_set", ("logging",)),
        ("controllerrevisions", None, "list_controller_revision_for_all_namespaces", ()),
        ("controllerrevisions", "logging", "list_namespaced_controller_revision", ("logging",)),
        ("nodes", "logging", "list_node", ()),  # cluster-scoped: the namespace doesn't apply
        ("namespaces", None, "list_namespace", ()),
    ],
)
async def test_list_scoped_picks_every_namespace_or_one(
    resource: str, namespace: str | None, method: str, args: tuple[str, ...]
) -> None:
    api = client.ApiClient(client.Configuration())
    try:
        call = list_scoped(api, resource, namespace, label_selector="x")
        assert call.func.__name__ == method  # type: ignore[attr-defined]
        assert call.args == args  # type: ignore[attr-defined]
        assert call.keywords == {"label_selector": "x"}  # type: ignore[attr-defined]
    finally:
        await api.close()


async def test_list_explained_pages_and_bounds_each_request() -> None:
    seen: list[dict[str, Any]] = []

    async def list_fn(**kwargs: Any) -> FakeResponse:
        seen.append(kwargs)
        page = len(seen)
        meta = {"continue": "more"} if page == 1 else {}
        return FakeResponse(200, orjson.dumps({"items": [{"n": page}], "metadata": meta}))

    assert await list_explained("pods", list_fn, label_selector="x") == [{"n": 1}, {"n": 2}]
    assert [k["_request_timeout"] for k in seen] == [60.0, 60.0]
    assert seen[0]["label_selector"] == "x" and seen[1]["_continue"] == "more"


async def test_list_explained_says_why_with_an_rbac_hint_or_the_callers_hint() -> None:
    async def forbidden(**kwargs: Any) -> FakeResponse:
        return FakeResponse(403, FORBIDDEN)

    async def not_found(**kwargs: Any) -> FakeResponse:
        return FakeResponse(404, b"{}")

    async def refused(**kwargs: Any) -> FakeResponse:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ListError) as e:
        await list_explained("pods", forbidden)
    assert str(e.value) == (
        "listing pods failed: 403 Forbidden "
        "(does your user have RBAC to list it? `kubectl auth can-i list pods`)"
    )
    assert e.value.status == 403 and not e.value.unreachable
    with pytest.raises(ListError) as e:
        await list_explained("widgets", not_found, hints={404: "is the CRD installed?"})
    assert str(e.value) == "listing widgets failed: 404 Not Found (is the CRD installed?)"
    with pytest.raises(ListError) as e:
        await list_explained("nodes", refused)
    assert e.value.unreachable and e.value.status is None
    assert str(e.value).startswith("listing nodes failed: ConnectionRefusedError:")


async def test_a_shared_watch_feeds_every_subscriber_in_turn() -> None:
    """One watch, several readers (the guard's node watch feeds its store and the audit's cache)."""
    calls: list[tuple[str, str, Any]] = []
    done = asyncio.Event()
    lines = [
        orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "n1", "resourceVersion": "8"}}})
        + b"\n"
    ]

    async def list_fn(**kwargs: Any) -> FakeResponse:
        if kwargs.get("watch"):
            return FakeResponse(200, b"", lines)
        return FakeResponse(200, orjson.dumps({"items": [{"metadata": {"name": "n0"}}], "metadata": {}}))

    def subscriber(who: str) -> Subscriber:
        def on_event(kind: str, obj: Any) -> None:
            calls.append((who, kind, obj["metadata"]["name"]))
            if who == "second":
                done.set()

        return Subscriber(
            lambda items: calls.append((who, "replace", [i["metadata"]["name"] for i in items])), on_event
        )

    r = Reflector("nodes", list_fn, subscribers=[subscriber("first"), subscriber("second")])
    await run_briefly(r, done)
    assert calls == [
        ("first", "replace", ["n0"]),
        ("second", "replace", ["n0"]),
        ("first", "ADDED", "n1"),
        ("second", "ADDED", "n1"),
    ]
    assert r.synced.is_set()


def test_a_reflector_needs_something_to_feed() -> None:
    async def list_fn(**kwargs: Any) -> FakeResponse:
        raise AssertionError("not called")

    with pytest.raises(TypeError, match="nothing to feed"):
        Reflector("nodes", list_fn)
    with pytest.raises(TypeError, match="together"):
        Reflector("nodes", list_fn, on_event=lambda k, o: None)
    first = Reflector("nodes", list_fn, on_replace=lambda items: None, on_event=lambda k, o: None,
                      subscribers=[Subscriber(lambda items: None, lambda k, o: None)])  # fmt: skip
    assert len(first.subscribers) == 2


async def test_a_410_gone_relists_at_once_and_counts_the_list() -> None:
    restarts: list[str] = []
    replaced: list[list[Any]] = []
    relisted = asyncio.Event()
    calls = {"list": 0}
    gone = orjson.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})

    async def list_fn(**kwargs: Any) -> FakeResponse:
        if kwargs.get("watch"):
            if calls["list"] == 1:
                return FakeResponse(200, b"", lines=[gone + b"\n"])  # the watch carries the 410, then ends
            return FakeResponse(200, b"", lines=[])  # stays open
        calls["list"] += 1
        return FakeResponse(
            200, orjson.dumps({"items": [], "metadata": {"resourceVersion": str(calls["list"])}})
        )

    def on_replace(items: list[Any]) -> None:
        replaced.append(items)
        if len(replaced) == 2:
            relisted.set()

    r = Reflector("pods", list_fn, on_replace=on_replace, on_event=lambda k, o: None,
                  on_restart=restarts.append)  # fmt: skip
    await run_briefly(r, relisted)
    assert r.lists == 2
    assert restarts == ["gone"]
    assert r.failing_since is None
