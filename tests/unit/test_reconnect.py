"""dsguard.reconnect: which failures are an answer and which are none, and the waits after each."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard import reconnect
from dsguard.reconnect import BACKOFF_ONLY, DEFAULT, Failure, Retry


def api_error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    e = ApiException(status=status, reason="x")
    e.headers = headers  # type: ignore[assignment]  # a plain mapping serves as well
    return e


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (ConnectionRefusedError(111, "Connection refused"), Failure.UNREACHABLE),
        (ConnectionResetError(104, "Connection reset by peer"), Failure.UNREACHABLE),
        (aiohttp.ServerDisconnectedError(), Failure.UNREACHABLE),
        (aiohttp.ClientPayloadError("Response payload is not completed"), Failure.UNREACHABLE),
        (aiohttp.ConnectionTimeoutError("Connection timeout"), Failure.UNREACHABLE),
        (TimeoutError(), Failure.UNREACHABLE),
        (api_error(503), Failure.ANSWERED),
        (api_error(429, {"Retry-After": "1"}), Failure.ANSWERED),
        (api_error(403), Failure.ANSWERED),
        (RuntimeError("watch error: too old"), Failure.ANSWERED),  # a watch ERROR event
        (ValueError("unexpected character"), Failure.ANSWERED),  # a garbled body came from somewhere
    ],
)
def test_classify(error: BaseException, failure: Failure) -> None:
    assert reconnect.classify(error) is failure


@pytest.mark.parametrize(
    ("error", "seconds"),
    [
        (api_error(429, {"Retry-After": "1"}), 1.0),
        (api_error(503, {"Retry-After": " 5 "}), 5.0),
        (api_error(503, {"Retry-After": "3600"}), reconnect.MAX_RETRY_AFTER),
        (api_error(503, {"Retry-After": "-2"}), 0.0),
        (api_error(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), None),
        (api_error(503, {}), None),
        (api_error(503), None),
        (ConnectionRefusedError(), None),
    ],
)
def test_retry_after(error: BaseException, seconds: float | None) -> None:
    assert reconnect.retry_after(error) == seconds


@pytest.mark.parametrize(
    ("retry", "errors", "after", "rand", "wait"),
    [
        (DEFAULT, 0, None, 0.5, 0.5),  # first, times 1.0
        (DEFAULT, 0, None, 0.0, 0.25),  # times 0.5
        (DEFAULT, 3, None, 0.5, 4.0),
        (DEFAULT, 10, None, 0.5, 30.0),  # the cap
        (DEFAULT, 10, None, 0.999, 30.0 * 1.499),
        (DEFAULT, 10_000, None, 0.5, 30.0),  # no overflow however long it fails
        (DEFAULT, 10, 1.0, 0.0, 1.0),  # Retry-After wins over the ladder
        (DEFAULT, 0, 2.0, 0.5, 2.2),
        (Retry(first=0.1, cap=1.0), 5, None, 0.5, 1.0),
        (BACKOFF_ONLY, 0, 5.0, 0.5, 0.5),  # the old reflector did not read Retry-After
    ],
)
def test_backoff(retry: Retry, errors: int, after: float | None, rand: float, wait: float) -> None:
    assert retry.backoff(errors, after=after, rand=lambda: rand) == pytest.approx(wait)


@pytest.mark.parametrize(("rand", "wait"), [(0.0, 0.5), (0.5, 0.75), (0.999, 0.9995)])
def test_probe_interval_is_short_and_jittered(rand: float, wait: float) -> None:
    assert DEFAULT.probe_interval(rand=lambda: rand) == pytest.approx(wait)


def test_backoff_only_is_the_old_behaviour() -> None:
    assert BACKOFF_ONLY.probe_every is None and not BACKOFF_ONLY.retry_after
    assert (BACKOFF_ONLY.first, BACKOFF_ONLY.cap) == (0.5, 30.0)
