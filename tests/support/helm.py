"""Helm for the real-node tests: localcluster/helm.py's runner (the binary built from Go modules,
its own HELM_*_HOME dirs, one LocalCluster's kubeconfig), failing the test when helm can't be built."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster.chart import CHART
from localcluster.helm import HelmError, HelmRunner, helm_bin_dir

__all__ = ["CHART", "Helm", "helm_for"]

Helm = Callable[..., subprocess.CompletedProcess[str]]


def helm_for(home: Path, kubeconfig: Path) -> Helm:
    """A `helm ARGS... [timeout=]` runner that raises AssertionError with helm's output on failure."""
    try:
        runner = HelmRunner(home, kubeconfig, helm_bin_dir())
    except HelmError as exc:
        pytest.fail(str(exc))

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            return runner.run(*args, timeout=timeout)
        except HelmError as exc:
            raise AssertionError(str(exc)) from None

    return run
