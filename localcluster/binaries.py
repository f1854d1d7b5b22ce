"""Find (and if needed build) the pinned control-plane binaries.

The binaries are built from Go modules by ``localcluster/gobuild/build.sh`` into a cache
directory outside the repository; nothing found on the machine (a system kubectl, a kind or
minikube cluster) is ever used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "BINARIES",
    "BinariesError",
    "GoMissingError",
    "bin_dir",
    "bin_path",
    "ensure_binaries",
    "ensure_node_binaries",
    "versions",
]

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "gobuild" / "build.sh"
NODE_BUILD_SCRIPT = HERE / "gobuild" / "build_node.sh"
VERSIONS_FILE = HERE / "gobuild" / "versions.env"

#: Every binary build.sh puts in the bin directory.
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kwok")

GO_INSTALL_HINT = (
    "Go is not installed, and it is needed once to build the local test cluster "
    "(kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok). "
    "Install Go >= 1.26 (https://go.dev/doc/install, or your distribution's golang package, "
    "e.g. `apt-get install golang-go` if that is recent enough) and retry."
)


class BinariesError(RuntimeError):
    """The binaries could not be built or found."""


class GoMissingError(BinariesError):
    """Go is needed to build the binaries and is not on PATH."""


def versions() -> dict[str, str]:
    """The pinned versions from gobuild/versions.env, e.g. {"KUBERNETES_VERSION": "1.37.2", ...}."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip("\"'")
    return out


def _run_build(*args: str, timeout: float | None = None, script: Path = BUILD_SCRIPT) -> str:
    try:
        proc = subprocess.run(
            ["bash", str(script), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except FileNotFoundError as exc:  # pragma: no cover - bash is everywhere we run
        raise BinariesError(f"cannot run {script}: {exc}") from exc
    if proc.returncode == 3 or (proc.returncode != 0 and "Go is not installed" in proc.stderr):
        raise GoMissingError(GO_INSTALL_HINT)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise BinariesError(f"{script} {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    if not lines:
        raise BinariesError(f"{script} printed no bin directory")
    return lines[-1].strip()


def bin_dir() -> Path:
    """Where the binaries are (or will be) for the pinned versions; does not build."""
    override = os.environ.get("DSGUARD_BIN_DIR")
    if override:
        return Path(override)
    return Path(_run_build("--print-dir"))


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


def ensure_binaries(*, timeout: float | None = None) -> Path:
    """Return the bin directory, building the binaries first if they are not there yet.

    A cold build takes a long time on a small machine (tens of minutes); a warm call only
    checks the cache. ``DSGUARD_BIN_DIR`` points at a directory of already built binaries.
    Raises GoMissingError (whose message says what to install) when a build is needed and Go
    is missing.
    """
    directory = bin_dir()
    if _complete(directory):
        return directory
    if os.environ.get("DSGUARD_BIN_DIR"):
        missing = [n for n in BINARIES if not os.access(directory / n, os.X_OK)]
        raise BinariesError(f"DSGUARD_BIN_DIR={directory} lacks {', '.join(missing)}")
    if shutil.which("go") is None:
        raise GoMissingError(GO_INSTALL_HINT)
    built = Path(_run_build(timeout=timeout))
    if not _complete(built):
        missing = [n for n in BINARIES if not os.access(built / n, os.X_OK)]
        raise BinariesError(f"build finished but {built} lacks {', '.join(missing)}")
    return built


def bin_path(name: str) -> Path:
    """Path of one built binary (building if needed); only names from BINARIES are allowed."""
    if name not in BINARIES:
        raise ValueError(f"unknown binary {name!r}; expected one of {', '.join(BINARIES)}")
    return ensure_binaries() / name


#: What build_node.sh puts in its bin directory (the real node's binaries).
NODE_BINARIES = ("kubelet", "kube-proxy", "pause")


def ensure_node_binaries(*, timeout: float | None = None) -> Path:
    """The real node's bin directory (kubelet, kube-proxy, pause), built by gobuild/build_node.sh
    first if missing (2.5 to 10 minutes cold on 2 cores, see docs/local-cluster.md). Its parent
    holds PAUSE_VERSION. ``DSGUARD_NODE_BIN_DIR`` points at binaries you already have."""
    override = os.environ.get("DSGUARD_NODE_BIN_DIR")
    directory = Path(override) if override else Path(_run_build("--print-dir", script=NODE_BUILD_SCRIPT))
    missing = [n for n in NODE_BINARIES if not os.access(directory / n, os.X_OK)]
    if not missing:
        return directory
    if override:
        raise BinariesError(f"DSGUARD_NODE_BIN_DIR={directory} lacks {', '.join(missing)}")
    built = Path(_run_build(timeout=timeout, script=NODE_BUILD_SCRIPT))
    missing = [n for n in NODE_BINARIES if not os.access(built / n, os.X_OK)]
    if missing:
        raise BinariesError(f"build finished but {built} lacks {', '.join(missing)}")
    return built
