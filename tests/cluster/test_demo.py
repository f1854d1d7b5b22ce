"""`make demo` is also a test: every step checks the outcome it tells (DemoFailed otherwise)."""

from __future__ import annotations

import io
from pathlib import Path

from localcluster.cluster import LocalCluster
from localcluster.demo import demo_environment, run_story


def test_demo_story(tmp_path: Path) -> None:
    # Its own cluster: the demo's coverage rule spans every node, and other tests add tainted ones.
    out = io.StringIO()
    with LocalCluster(tmp_path / "cluster") as cluster, demo_environment(cluster) as env:
        run_story(cluster, env, out)
    text = out.getvalue()
    assert "\033[31m✗" not in text  # a failed claim (dsguard check's own ✗ lines are expected)
    assert text.count("✓") >= 30  # every claim of every chapter was checked, and held
    assert "denied the request: dsguard: DaemonSet logging/fluent-bit violates 1 policy rule(s)" in text
    # What each later chapter printed, not only that its checks passed.
    assert "1 DaemonSet(s) checked against Kubernetes v1.38.0 on 24 node(s): 1 break" in text
    assert 'violates DaemonSetPolicy "log-collector" (coverage)' in text and "gpu-0" in text
    assert '"kind": "paused"' in text and "CrashLoopBackOff" in text
    assert "node NotReady" in text and "fluent-bit resumed" in text
