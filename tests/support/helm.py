"""Helm for the real-node tests: the binary built from Go modules (localcluster/gobuild), run
with its own HELM_*_HOME dirs against one LocalCluster's kubeconfig."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["CHART", "Helm", "helm_for"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "manifests" / "helm" / "dsguard"
BUILD_HELM = REPO / "localcluster" / "gobuild" / "build_helm.sh"

Helm = Callable[..., subprocess.CompletedProcess[str]]


def helm_for(home: Path, kubeconfig: Path) -> Helm:
    """A `helm ARGS... [timeout=]` runner that raises AssertionError with helm's output on failure."""
    proc = subprocess.run(
        ["bash", str(BUILD_HELM)], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{BUILD_HELM} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1]) / "helm"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
    env |= {f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}
    env["KUBECONFIG"] = str(kubeconfig)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    return run
