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
    assert text.count("✓") >= 9
    assert "denied the request: dsguard: DaemonSet logging/fluent-bit violates 1 policy rule(s)" in text
