"""How a Reflector waits before it lists again: back off from an apiserver that answers with
errors, probe one that does not answer at all.

An apiserver that answers 5xx or 429 is alive and struggling: every client listing again at
once would make it worse, so the wait doubles (jittered) up to a cap, and a Retry-After it
sends is honoured. An apiserver that does not answer (connection refused or reset, no
connection in time) is restarting or unreachable; waiting 30 s after it is back leaves the
webhook and the guard blind for nothing, and a refused connection costs it nothing. So the
reflector probes it on a short jittered interval (a `limit=1` list of its own resource: the
access it already has, through whatever proxy is in between) and lists again as soon as it
answers. See docs/guard.md, "After an apiserver outage", for how this differs from client-go.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

# A connection to a live apiserver on a working network takes milliseconds; one that takes
# longer than this is as good as refused, and the probe after it says when it is back.
CONNECT_TIMEOUT = 5.0
# A probe is one small request: a live apiserver answers it well within this.
PROBE_TIMEOUT = 5.0
# A Retry-After longer than this is not taken at its word (a proxy's, a typo's).
MAX_RETRY_AFTER = 60.0


class Failure(enum.Enum):
    ANSWERED = "answered"  # an HTTP answer that is an error (5xx, 429, 403, a watch ERROR event)
    UNREACHABLE = "unreachable"  # no answer: refused, reset, cut mid-stream, timed out


def classify(error: BaseException) -> Failure:
    """Whether the apiserver answered (`error` carries its status) or did not answer at all."""
    if isinstance(error, ApiException):
        return Failure.ANSWERED
    # aiohttp's ClientConnectionError covers refused, reset, disconnected and timed-out
    # connections; ClientPayloadError a response cut off mid-body (the stream of a watch
    # whose apiserver died); OSError and TimeoutError what the socket layer raises itself.
    if isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError | TimeoutError):
        return Failure.UNREACHABLE
    return Failure.ANSWERED


def retry_after(error: BaseException) -> float | None:
    """The seconds an answer's Retry-After header asks for (delta-seconds only, as the
    apiserver sends it), bounded by MAX_RETRY_AFTER; None without one."""
    if not isinstance(error, ApiException):
        return None
    return retry_after_header(getattr(error, "headers", None))


def retry_after_header(headers: Mapping[str, str] | None) -> float | None:
    """retry_after of a response's headers (a watch's 429 is a response, not an exception)."""
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: not what the apiserver sends; the backoff applies
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Retry:
    """A reflector's waits. After the n-th answered error in a row (n from 0):
    `first * 2**n`, at most `cap`, times a random factor in [0.5, 1.5), or the answer's
    Retry-After (times [1, 1.2)) when it sent one and `retry_after` is on. When the apiserver
    does not answer: a probe every `probe_every` seconds (uniform in that range), or, with
    probe_every None, the same backoff as for answered errors (what the reflector did before,
    and roughly client-go)."""

    first: float = 0.5
    cap: float = 30.0
    probe_every: tuple[float, float] | None = (0.5, 1.0)
    retry_after: bool = True

    def backoff(
        self, errors: int, *, after: float | None = None, rand: Callable[[], float] = random.random
    ) -> float:
        """The wait after the `errors`-th answered error in a row (0 for the first)."""
        if after is not None and self.retry_after:
            return after * (1.0 + 0.2 * rand())
        base = min(self.first * 2.0 ** min(errors, 64), self.cap)
        return base * (0.5 + rand())

    def probe_interval(self, rand: Callable[[], float] = random.random) -> float:
        assert self.probe_every is not None
        low, high = self.probe_every
        return low + (high - low) * rand()


#: The reflector's retries: back off from errors, probe an apiserver that doesn't answer.
DEFAULT = Retry()
#: Before issue 16: every failure backs off to 30 s, Retry-After unread (the benchmarks' baseline).
BACKOFF_ONLY = Retry(probe_every=None, retry_after=False)
