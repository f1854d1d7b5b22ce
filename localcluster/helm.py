"""Helm against a LocalCluster: the binary built from Go modules (gobuild/build_helm.sh, cached in
~/.cache/dsguard), run with HELM_*_HOME dirs of its own (the demo, the in-cluster tests and the
admission bench; localcluster/chart.py has what they install)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["HelmError", "HelmRunner", "helm_bin_dir"]

BUILD_HELM = Path(__file__).resolve().parent / "gobuild" / "build_helm.sh"


class HelmError(RuntimeError):
    """Helm could not be built, or a helm command failed; the message carries its output."""


def helm_bin_dir() -> Path:
    """The directory of the pinned helm binary, built first when missing (minutes, once)."""
    proc = subprocess.run(
        ["bash", str(BUILD_HELM)], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        raise HelmError(f"{BUILD_HELM} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class HelmRunner:
    """`helm ARGS...` with its own HELM_{CACHE,CONFIG,DATA}_HOME under `home`, against `kubeconfig`
    (None: no cluster, for `helm template` and `helm lint`; never the machine's KUBECONFIG)."""

    def __init__(self, home: Path, kubeconfig: Path | None, bin_dir: Path | None = None) -> None:
        self.binary = (bin_dir or helm_bin_dir()) / "helm"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
        env |= {f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        self.env = env

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """HelmError with helm's output when it fails (unless check=False)."""
        p = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check and p.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p
