"""`dsguard guard --log-format json` on the real control plane: a crash-looping rollout paused,
and every line the guard wrote is one JSON object; the lines about the DaemonSet name it in
`object`, the leader election lines name the Lease."""

from __future__ import annotations

import json
from typing import Any

from localcluster.guard_host import LEASE_NAMESPACE
from tests.support.guard_scenario import BAD_IMAGE, CRASHLOOP, Scenario, setup_rollout


def test_guard_writes_one_json_object_per_line_naming_the_object(scenario: Scenario) -> None:
    s = scenario
    guard = s.guard(s.policy(), extra_args=["--log-format", "json"])
    setup_rollout(s, [guard])
    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    s.paused()
    guard.stop()

    # The harness heads each start of the process with "--- start N: argv"; the rest is the guard's.
    lines = [
        line for line in guard.log_text().splitlines() if line.strip() and not line.startswith("--- start ")
    ]
    docs: list[dict[str, Any]] = [json.loads(line) for line in lines]  # fails on any other line
    assert docs, "the guard logged nothing"
    for d in docs:
        assert {"time", "level", "logger", "message", "object"} <= set(d), d
    ds = {"kind": "DaemonSet", "namespace": s.ns, "name": "agent"}
    about_ds = [d for d in docs if d["object"] == ds]
    assert any("pause" in d["message"].lower() for d in about_ds), [d["message"] for d in about_ds]
    lease = {"kind": "Lease", "namespace": LEASE_NAMESPACE, "name": s.lease}
    assert any(d["object"] == lease and d["message"].startswith("acquired leadership") for d in docs), docs
