"""A guard pause survives a re-apply of the manifest (what Argo CD self-heal or Flux do), through
the mutating webhook on the real control plane, until `dsguard resume` lifts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from localcluster.cluster import LocalCluster
from localcluster.webhook_host import HostWebhook
from tests.support.guard_scenario import BAD_IMAGE, CRASHLOOP, Scenario, setup_rollout


def test_reapplied_manifest_keeps_the_pause_until_dsguard_resume(
    cluster: LocalCluster, scenario: Scenario
) -> None:
    s = scenario
    guard = s.guard(s.policy())
    setup_rollout(s, [guard])
    only_this_namespace = {"matchLabels": {"kubernetes.io/metadata.name": s.ns}}
    with HostWebhook(cluster, namespace_selector=only_this_namespace):
        bad = s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP)
        s.apply(bad)
        paused = s.paused()
        assert s.ds()["spec"]["updateStrategy"] == {"type": "OnDelete"}

        # The manifest from git, applied again: it says RollingUpdate.
        proc = s.kubectl("apply", "-f", "-", input=json.dumps(bad))
        assert "dsguard kept spec.updateStrategy OnDelete" in proc.stderr, proc.stderr
        assert f"dsguard resume {s.ns}/agent" in proc.stderr
        after = s.ds()
        assert after["spec"]["updateStrategy"] == {"type": "OnDelete"}, "the pause was undone"
        annotations = after["metadata"]["annotations"]
        assert annotations["dsguard.io/paused"] == "true"
        assert annotations["dsguard.io/paused-revision"] == paused["dsguard.io/paused-revision"]

        # `dsguard resume` is let through: it lifts the pause annotation with the strategy.
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        out = subprocess.run(
            [sys.executable, "-m", "dsguard.cli", "resume", f"{s.ns}/agent"],
            capture_output=True, text=True, env=env, check=False, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert '"type":"RollingUpdate"' in out.stdout, out.stdout
