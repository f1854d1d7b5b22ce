"""The gates' measurements (guard/gates.py judges them): the apiserver's request counter, sampled
on a timer, and Prometheus instant queries. The edge: HTTP, bounded in time and size.

The apiserver sampler reads `/metrics` through the guard's own Kubernetes client (RBAC: `get` on
the nonResourceURL `/metrics`). It runs while a policy has an apiserver gate, so that a baseline
rate exists when a rollout starts; a failed read is logged and counted, and leaves a gap in the
samples (the rate is then measured over what is there, or pending).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio import client
from prometheus_client import Gauge

from dsguard.kube import raw_body
from dsguard.policy import PrometheusGate
from guard.gates import RateWindow, query_value, total_requests

log = logging.getLogger("dsguard.guard.gates")

SAMPLE_INTERVAL = 5.0  # seconds between reads of the apiserver's counter (--gate-sample-interval)
BASELINE_SAMPLES = 12  # the rate before the rollout: over the last 12 intervals (a minute)
CURRENT_SAMPLES = 6  # the rate during it: over the last 6 (30 s)
QUERY_INTERVAL = 5.0  # a Prometheus query is answered from the last result for this long
QUERY_TIMEOUT = 5.0
MAX_QUERY_BODY = 1024 * 1024


class ApiserverSampler:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        wanted: Callable[[], bool],
        interval: float = SAMPLE_INTERVAL,
        clock: Callable[[], float] = time.time,
        rates: Gauge | None = None,
    ) -> None:
        self.api = api
        self.wanted = wanted  # any policy with an apiserver gate
        self.interval = interval
        self.clock = clock
        self.window = RateWindow(keep_seconds=max(900.0, 2 * BASELINE_SAMPLES * interval))
        self.errors = 0
        self.rates = rates

    async def read_total(self) -> float:
        body = await raw_body(
            self.api.call_api(
                "/metrics",
                "GET",
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=10,
            )
        )
        return total_requests(body.decode("utf-8", "replace"))

    async def sample(self) -> None:
        try:
            total = await self.read_total()
        except (client.ApiException, aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            self.errors += 1
            log.warning("apiserver gate: reading /metrics failed: %s: %s", type(e).__name__, e)
            return
        self.window.add(self.clock(), total)
        if self.rates is not None:
            for window, rate in (("baseline", self.baseline()), ("current", self.current())):
                if rate is not None:
                    self.rates.labels(window).set(rate)

    async def run(self) -> None:
        while True:
            if self.wanted():
                await self.sample()
            await asyncio.sleep(self.interval)

    def baseline(self) -> float | None:
        return self.window.rate(BASELINE_SAMPLES * self.interval, self.clock())

    def current(self) -> float | None:
        return self.window.rate(CURRENT_SAMPLES * self.interval, self.clock())


@dataclass
class _Answer:
    at: float
    value: float | None
    error: str


class PrometheusProber:
    """Instant queries against a Prometheus HTTP API, each answered at most every QUERY_INTERVAL."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.clock = clock
        self.ssl_context = ssl_context  # None: aiohttp's default (the system's CAs)
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def value(self, gate: PrometheusGate) -> tuple[float | None, str]:
        key = (gate.url, gate.query)
        cached = self._answers.get(key)
        now = self.clock()
        if cached is not None and now - cached.at < QUERY_INTERVAL:
            return cached.value, cached.error
        value, error = await self._query(gate)
        self._answers[key] = _Answer(now, value, error)
        return value, error

    async def _query(self, gate: PrometheusGate) -> tuple[float | None, str]:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context is not None else True)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT)
            )
        url = gate.url.rstrip("/") + "/api/v1/query"
        try:
            async with self._session.get(url, params={"query": gate.query}) as resp:
                body = await resp.content.read(MAX_QUERY_BODY + 1)
                if len(body) > MAX_QUERY_BODY:
                    return None, f"answer over {MAX_QUERY_BODY} bytes"
                if resp.status >= 500 or resp.status in (401, 403, 404):
                    return None, f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}"
                return query_value(body), ""
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return None, f"{type(e).__name__}: {e}"
        except ValueError as e:
            return None, str(e)


class Probes:
    """The guard's GateProbes: the apiserver sampler and the Prometheus prober together."""

    def __init__(self, sampler: ApiserverSampler, prober: PrometheusProber) -> None:
        self.sampler = sampler
        self.prober = prober

    def apiserver_baseline(self) -> float | None:
        return self.sampler.baseline()

    def apiserver_current(self) -> float | None:
        return self.sampler.current()

    async def prometheus(self, index: int, gate: object) -> tuple[float | None, str]:
        if not isinstance(gate, PrometheusGate):
            return None, "not a Prometheus gate"
        return await self.prober.value(gate)
