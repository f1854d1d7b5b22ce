"""guard.gates: the apiserver and Prometheus gates' measurements and verdicts (pure)."""

from __future__ import annotations

import json

import pytest

from dsguard.policy import ApiserverGate, PrometheusGate
from guard.gates import GateStatus, RateWindow, judge_apiserver, judge_prometheus, query_value, total_requests

METRICS = """# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",verb="GET"} 1200
apiserver_request_total{code="201",component="apiserver",verb="POST"} 34.0
# HELP apiserver_request_duration_seconds x
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{le="0.1",verb="GET"} 5
"""


def test_total_requests_sums_every_series() -> None:
    assert total_requests(METRICS) == 1234.0


def test_total_requests_reads_only_the_counter_itself() -> None:
    # Only the counter's own sample lines are parsed (the exposition is megabytes); names that
    # merely start the same way, and comments naming it, are not its samples.
    text = METRICS + (
        "# HELP apiserver_request_total_extra y\n# TYPE apiserver_request_total_extra gauge\n"
        'apiserver_request_total_extra{verb="GET"} 1000\n'
        "apiserver_request_totals 7\n"
        'apiserver_request_total{code="500",verb="LIST"} 1e3\n'
    )
    assert total_requests(text) == 2234.0


@pytest.mark.parametrize("text", ["", "# TYPE x counter\nx 1\n"])
def test_total_requests_without_the_counter(text: str) -> None:
    with pytest.raises(ValueError, match="no apiserver_request_total"):
        total_requests(text)


def test_rate_window() -> None:
    w = RateWindow(keep_seconds=120)
    assert w.rate(30, 0) is None
    for t in range(0, 61, 10):
        w.add(t, 100 + 5 * t)  # 5 req/s
    assert w.rate(30, 60) == pytest.approx(5.0)
    assert w.rate(5, 60) is None, "one sample in the window is no rate"
    w.add(70, 10)  # counter reset: the apiserver restarted
    assert w.rate(30, 70) is None
    w.add(80, 110)
    w.add(100, 310)
    assert w.rate(30, 100) == pytest.approx(10.0)
    w.add(400, 3000)
    assert [t for t, _ in w.samples] == [400], "old samples are dropped"


GATE = ApiserverGate("50%")


@pytest.mark.parametrize(
    ("baseline", "current", "status", "text"),
    [
        (10.0, 14.9, GateStatus.PASS, "14.9 req/s vs 10.0 req/s before the rollout"),
        (10.0, 15.5, GateStatus.FAIL, "15.5 req/s vs 10.0 req/s before the rollout (+55%, over +50%)"),
        (0.2, 1.1, GateStatus.PASS, "1.1 req/s"),  # near-idle: +1 req/s allowed
        (0.2, 1.3, GateStatus.FAIL, "+550%"),
        (10.0, None, GateStatus.PENDING, "measuring"),
        (None, 3.0, GateStatus.ERROR, "no baseline"),
    ],
)
def test_judge_apiserver(
    baseline: float | None, current: float | None, status: GateStatus, text: str
) -> None:
    r = judge_apiserver(GATE, baseline, current)
    assert r.status is status and text in r.message, r.message


def answer(result_type: str, result: object, status: str = "success") -> str:
    return json.dumps({"status": status, "data": {"resultType": result_type, "result": result}})


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (answer("vector", [{"metric": {}, "value": [1.0, "0.25"]}]), 0.25),
        (answer("scalar", [1.0, "3"]), 3.0),
        (answer("vector", [{"metric": {}, "value": [1.0, "+Inf"]}]), float("inf")),
    ],
)
def test_query_value(body: str, value: float) -> None:
    assert query_value(body) == value


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("<html>", "not JSON"),
        (json.dumps({"status": "error", "error": "parse error at char 3"}), "parse error at char 3"),
        (answer("vector", []), "returned 0 series"),
        (answer("vector", [{"value": [1, "1"]}, {"value": [1, "2"]}]), "returned 2 series"),
        (answer("matrix", []), "resultType 'matrix'"),
        (answer("vector", [{"value": [1, "NaN"]}]), "NaN"),
        (answer("vector", [{"value": [1, "x"]}]), "not a number"),
        (json.dumps([1]), "query failed"),
    ],
)
def test_query_value_errors(body: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        query_value(body)


def test_judge_prometheus() -> None:
    gate = PrometheusGate(url="http://p:9090", query="sum(rate(errors[2m]))", max=0.5, min=0.0)
    assert judge_prometheus(0, gate, 0.4).status is GateStatus.PASS
    over = judge_prometheus(0, gate, 0.75)
    assert over.status is GateStatus.FAIL and over.message == "'sum(rate(errors[2m]))' = 0.75, over max 0.5"
    assert judge_prometheus(1, gate, -1).status is GateStatus.FAIL
    err = judge_prometheus(2, gate, None, "connection refused")
    assert (
        err.status is GateStatus.ERROR and err.gate == "prometheus[2]" and "connection refused" in err.message
    )
