"""`make demo`'s choice between dsguard installed on the real node and run on the host, and the
message on a machine that can't run a real node (its lacks stubbed: the real check is
host_state.missing_requirements, exercised by the real-node tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from localcluster import demo, host_state


@pytest.mark.parametrize(
    ("host_run", "env", "reason"),
    [
        (False, None, ""),
        (False, "0", ""),
        (True, None, "--host-run"),
        (False, "1", "DSGUARD_NO_REAL_NODE=1 (a machine without a real node)"),
        (True, "1", "--host-run"),
    ],
)
def test_host_run_reason(
    host_run: bool, env: str | None, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv(host_state.NO_REAL_NODE_ENV, raising=False)
    else:
        monkeypatch.setenv(host_state.NO_REAL_NODE_ENV, env)
    assert demo._host_run_reason(argparse.Namespace(host_run=host_run)) == reason


def test_a_machine_without_a_real_node_fails_naming_what_it_lacks_and_host_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv(host_state.NO_REAL_NODE_ENV, raising=False)
    lacks = ["root (containerd, the kubelet and kube-proxy need it): run as root"]
    monkeypatch.setattr(host_state, "missing_requirements", lambda: lacks)
    assert demo.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot run the real node dsguard is installed on; it lacks: root (containerd" in err
    assert "python -m localcluster.demo --host-run" in err and "DSGUARD_NO_REAL_NODE=1 make demo" in err


@pytest.mark.parametrize("fleet_only", [False, True])
def test_the_log_collector_and_its_coverage_leave_the_real_node_out(fleet_only: bool) -> None:
    ds = demo.fluent_bit("cr.fluentbit.io/fluent/fluent-bit:3.2.1", fleet_only=fleet_only)
    policy = demo.log_collector_policy(fleet_only=fleet_only)
    affinity = ds["spec"]["template"]["spec"].get("affinity")
    coverage = policy["spec"]["tolerations"]["coverage"]["nodeSelector"]
    if not fleet_only:
        assert affinity is None and coverage == {}
        return
    off_real_node = [{"key": "dsguard.local/real-node", "operator": "DoesNotExist"}]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": off_real_node}]
    assert coverage == {"matchExpressions": off_real_node}
