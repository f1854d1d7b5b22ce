"""The list+watch reflector's edges: HTTP errors must not pass for data (a 403 is not an empty list)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from kubernetes_asyncio import client

from dsguard.kube import ListError, Reflector, Subscriber, list_explained, list_scoped, readyz_probe
from dsguard.reconnect import Retry
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


# --- after an outage (dsguard.reconnect) -------------------------------------------------------


class Apiserver:
    """A fake apiserver for one resource that can be down (connections refused) or answer an
    error; it records what was asked of it: lists, probes (limit=1) and watches."""

    def __init__(self) -> None:
        self.down = False
        self.error: tuple[int, dict[str, str]] | None = None
        self.calls: list[tuple[float, str]] = []
        self.watch_open = asyncio.Event()
        self.cut = asyncio.Event()  # set: the open watch's connection dies

    async def list_fn(self, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        kind = "watch" if kwargs.get("watch") else "probe" if kwargs.get("limit") == 1 else "list"
        self.calls.append((asyncio.get_running_loop().time(), kind))
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.error is not None:
            status, headers = self.error
            resp = FakeResponse(status, b"{}")
            resp.headers = headers  # type: ignore[attr-defined]
            return resp
        if kind != "watch":
            return FakeResponse(200, orjson.dumps({"items": [], "metadata": {"resourceVersion": "5"}}))
        self.cut.clear()
        self.watch_open.set()
        return CutWatch(self.cut)

    def count(self, kind: str) -> int:
        return sum(1 for _, k in self.calls if k == kind)


class CutWatch(FakeResponse):
    """A watch that stays open until its connection is cut (the apiserver killed)."""

    def __init__(self, cut: asyncio.Event) -> None:
        super().__init__(200, b"", [])
        self._cut = cut

    async def iter_any(self) -> Any:
        await self._cut.wait()
        raise aiohttp.ClientPayloadError("Response payload is not completed")
        yield b""  # an async generator


async def outage(api: Apiserver, r: Reflector, *, probes: int) -> None:
    """List and watch, then cut the watch with the apiserver down until `probes` probes failed."""
    await poll_async(lambda: api.watch_open.is_set(), what="the first watch", timeout=5)
    api.watch_open.clear()
    api.down = True
    api.cut.set()
    await poll_async(lambda: api.count("probe") >= probes, what=f"{probes} probes", timeout=10)


async def test_an_apiserver_that_does_not_answer_is_probed_and_listed_as_soon_as_it_answers() -> None:
    # the backoff (5 s) would keep it down long after the apiserver is back; probes don't
    retry, recovers_within = Retry(first=5.0, cap=5.0, probe_every=(0.01, 0.02)), 1.0
    api = Apiserver()
    r = Reflector(
        "nodes", api.list_fn, on_replace=lambda items: None, on_event=lambda k, o: None, retry=retry
    )
    task = asyncio.create_task(r.run())
    try:
        await outage(api, r, probes=5)
        assert r.failing_since is not None and r.synced.is_set()
        assert api.count("list") == 1  # no full list while it doesn't answer: probes only
        api.down = False
        back = asyncio.get_running_loop().time()
        await poll_async(lambda: r.failing_since is None, what="the relist", timeout=recovers_within)
        relisted = next(t for t, k in reversed(api.calls) if k == "list")
        assert relisted - back < recovers_within
        assert r.lists == 2 and api.count("list") == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_backoff_only_waits_its_backoff_and_never_probes() -> None:
    api = Apiserver()
    r = Reflector("nodes", api.list_fn, on_replace=lambda items: None, on_event=lambda k, o: None,
                  retry=Retry(first=0.05, cap=0.05, probe_every=None))  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await poll_async(lambda: api.watch_open.is_set(), what="the first watch", timeout=5)
        api.down = True
        api.cut.set()
        await poll_async(lambda: api.count("list") >= 4, what="lists retried", timeout=5)
        assert api.count("probe") == 0
        api.down = False
        await poll_async(lambda: r.failing_since is None, what="the relist", timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("status", "headers", "min_gap", "max_gap"),
    [
        # backoff 0.2 -> 0.4 -> 0.8 (jittered): answered errors back off; + 0.2 s for the loop to get
        # from the sleep to the next list (as below: a gap of 1.2001 s failed CI once)
        (503, {}, 0.5 * 0.2, 1.5 * 0.8 + 0.2),
        (429, {"Retry-After": "0.3"}, 0.3, 0.3 * 1.2 + 0.2),  # the apiserver's word, not the ladder
    ],
)
async def test_an_apiserver_that_answers_errors_is_backed_off_not_probed(
    status: int, headers: dict[str, str], min_gap: float, max_gap: float
) -> None:
    api = Apiserver()
    api.error = (status, headers)
    r = Reflector("nodes", api.list_fn, on_replace=lambda items: None, on_event=lambda k, o: None,
                  retry=Retry(first=0.2, cap=0.8, probe_every=(0.01, 0.02)))  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await poll_async(lambda: api.count("list") >= 4, what="four lists", timeout=10)
        times = [t for t, k in api.calls if k == "list"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert api.count("probe") == 0
        assert all(min_gap <= g <= max_gap for g in gaps), gaps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_staleness_is_zero_while_watching_rises_in_an_outage_and_falls_on_relist(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    api = Apiserver()
    r = Reflector("pods", api.list_fn, on_replace=lambda items: None, on_event=lambda k, o: None,
                  retry=Retry(probe_every=(0.01, 0.02)), monotonic=lambda: now[0])  # fmt: skip
    assert r.staleness() == 0.0  # since start, before the first list
    now[0] = 103.0
    assert r.staleness() == 3.0
    task = asyncio.create_task(r.run())
    try:
        await poll_async(lambda: api.watch_open.is_set(), what="the first watch", timeout=5)
        assert r.staleness() == 0.0
        now[0] = 200.0
        assert r.staleness() == 0.0  # a quiet watch is not a stale one
        await outage(api, r, probes=2)
        now[0] = 212.5
        assert r.staleness() == 12.5
        api.down = False
        await poll_async(lambda: r.failing_since is None, what="the relist", timeout=5)
        assert r.staleness() == 0.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # one warning when it was lost, one when it was back (with how long), no traceback
    logged = [(rec.levelname, rec.getMessage()) for rec in caplog.records if rec.name == "dsguard.kube"]
    warnings = [m for lvl, m in logged if lvl == "WARNING"]
    assert len(warnings) == 2, logged
    assert "does not answer (ClientPayloadError" in warnings[0]  # the watch cut
    assert "listed again (0 objects) after 12.5s" in warnings[1]
    assert not any(rec.exc_info for rec in caplog.records)
    assert all(lvl in ("DEBUG", "INFO", "WARNING") for lvl, _ in logged)


async def test_a_probe_that_answers_not_ready_keeps_the_reflector_from_listing_until_ready() -> None:
    """readyz_probe: a restarted apiserver answers before it serves every resource; listing then
    would meet a 503 and back off (Retry-After: 5) for seconds after it is ready."""
    api = Apiserver()
    answers: list[str] = []
    refused = 0

    async def probe() -> bool:
        nonlocal refused
        if api.down:
            refused += 1
            raise ConnectionRefusedError(111, "Connection refused")
        answers.append("not ready" if len(answers) < 3 else "ready")
        return answers[-1] == "ready"

    r = Reflector("daemonsetpolicies", api.list_fn, on_replace=lambda items: None, on_event=lambda k, o: None,
                  retry=Retry(first=5.0, probe_every=(0.01, 0.02)), probe=probe)  # fmt: skip
    task = asyncio.create_task(r.run())
    try:
        await poll_async(lambda: api.watch_open.is_set(), what="the first watch", timeout=5)
        api.down = True
        api.cut.set()
        await poll_async(lambda: refused >= 3, what="probes refused", timeout=5)
        api.down = False
        await poll_async(lambda: r.failing_since is None, what="the relist", timeout=5)
        assert answers == ["not ready"] * 3 + ["ready"]
        assert api.count("list") == 2 and api.count("probe") == 0  # no list before it was ready
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


THROTTLED = orjson.dumps(
    {"type": "ERROR", "object": {"kind": "Status", "code": 429, "reason": "TooManyRequests",
                                 "message": "storage is (re)initializing",
                                 "details": {"retryAfterSeconds": 0.2}}}
)  # fmt: skip


@pytest.mark.parametrize("how", ["HTTP 429 with Retry-After", "watch ERROR event 429"])
async def test_a_throttled_watch_is_reopened_from_its_resource_version_without_a_relist(how: str) -> None:
    """client-go's reflector backs off and watches again after a 429: a relist would add load
    where the apiserver asked for less, and the watch from the same resourceVersion loses nothing."""
    watches: list[tuple[float, str]] = []
    failing_while_throttled: list[bool] = []
    restarts: list[str] = []
    lists = 0
    reopened = asyncio.Event()
    r: Reflector

    async def list_fn(**kwargs: Any) -> FakeResponse:
        nonlocal lists
        if not kwargs.get("watch"):
            lists += 1
            return FakeResponse(200, orjson.dumps({"items": [], "metadata": {"resourceVersion": "7"}}))
        watches.append((asyncio.get_running_loop().time(), kwargs["resource_version"]))
        failing_while_throttled.append(r.failing_since is not None)
        if len(watches) <= 2:
            if how.startswith("HTTP"):
                resp = FakeResponse(429, b"{}")
                resp.headers = {"Retry-After": "0.2"}  # type: ignore[attr-defined]
                return resp
            return FakeResponse(200, b"", lines=[THROTTLED + b"\n"])
        reopened.set()
        return FakeResponse(200, b"", lines=[])  # stays open

    r = Reflector("pods", list_fn, on_replace=lambda items: None, on_event=lambda k, o: None,
                  on_restart=restarts.append, retry=Retry(first=5.0, cap=5.0))  # fmt: skip
    await run_briefly(r, reopened)
    await poll_async(lambda: r.failing_since is None, what="the watch counted current again", timeout=5)
    assert lists == 1  # no relist
    assert [rv for _, rv in watches] == ["7", "7", "7"]
    assert restarts == ["throttled", "throttled"]
    assert failing_while_throttled == [False, True, True]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(watches)]
    assert all(0.2 <= g < 2.0 for g in gaps), gaps  # the apiserver's 0.2 s, not the 5 s ladder (2.5-7.5 s)
    assert r.staleness() == 0.0


class FakeReadyzClient:
    """What readyz_probe uses of an ApiClient: call_api answering /readyz with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.paths: list[str] = []

    async def call_api(self, path: str, method: str, **kwargs: Any) -> FakeResponse:
        self.paths.append(f"{method} {path}")
        return FakeResponse(self.status, b"[-]etcd failed" if self.status != 200 else b"ok")


@pytest.mark.parametrize(
    ("status", "back"),
    [
        (200, True),  # ready: list again
        (500, False),  # answers, not ready yet (a post-start hook, etcd): probe on
        (503, False),
        (401, True),  # /readyz not ours to read: the list itself tells
        (403, True),
        (404, True),
    ],
)
async def test_readyz_probe(status: int, back: bool) -> None:
    api = FakeReadyzClient(status)
    assert await readyz_probe(api)() is back  # type: ignore[arg-type]
    assert api.paths == ["GET /readyz"]
