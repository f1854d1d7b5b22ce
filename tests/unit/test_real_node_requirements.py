"""localcluster.host_state.missing_requirements(): what a machine lacks to run the real node, each
with its fix (the message the real-node tests fail with instead of skipping). The machine's facts
are faked here (not root, no overlay, no cgroups, no packages): edge cases this machine doesn't
have. The real check runs in tests/cluster/test_real_node.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster import host_state

ALL_TOOLS = lambda cmd: f"/usr/bin/{cmd}"  # noqa: E731 - every command found


def _machine(
    tmp_path: Path, *, v2: bool = False, v1: tuple[str, ...] = (), overlay: bool = True, cni: bool = True
) -> tuple[Path, Path, Path]:
    cg = tmp_path / "cgroup"
    cg.mkdir()
    if v2:
        (cg / "cgroup.controllers").write_text("cpu memory pids\n")
    for c in v1:
        (cg / c).mkdir()
        (cg / c / "cgroup.procs").write_text("")
    fs = tmp_path / "filesystems"
    fs.write_text("nodev\tsysfs\nnodev\ttmpfs\n" + ("nodev\toverlay\n" if overlay else ""))
    cni_dir = tmp_path / "cni"
    cni_dir.mkdir()
    if cni:
        for p in ("bridge", "host-local", "loopback", "portmap"):
            (cni_dir / p).write_text("")
    return cg, fs, cni_dir


V1 = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer", "cpuset")

CASES: list[tuple[str, int, dict[str, object], Callable[[str], str | None], list[str]]] = [
    ("all there (v1)", 0, {"v1": V1}, ALL_TOOLS, []),
    ("all there (v2)", 0, {"v2": True}, ALL_TOOLS, []),
    ("not root", 1000, {"v2": True}, ALL_TOOLS, ["root (containerd, the kubelet and kube-proxy need it)"]),
    ("no overlay", 0, {"v2": True, "overlay": False}, ALL_TOOLS, ["the overlay filesystem"]),
    (
        "v1 without memory, pids",
        0,
        {"v1": ("cpu", "cpuacct", "devices", "freezer", "cpuset")},
        ALL_TOOLS,
        ["cgroup v1 controllers memory, pids mounted"],
    ),
    (
        "no containerd, no CNI",
        0,
        {"v2": True, "cni": False},
        lambda cmd: None if cmd in ("containerd", "ctr") else f"/usr/bin/{cmd}",
        ["Debian packages containerd, containernetworking-plugins: `make node-packages`"],
    ),
]


@pytest.mark.parametrize(
    ("euid", "machine", "which", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_missing_requirements_name_what_and_the_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    euid: int,
    machine: dict[str, object],
    which: Callable[[str], str | None],
    expected: list[str],
) -> None:
    cg, fs, cni_dir = _machine(tmp_path, **machine)  # type: ignore[arg-type]
    monkeypatch.setattr(host_state, "CGROUP_ROOT", cg)
    monkeypatch.setattr(host_state, "_FILESYSTEMS", fs)
    monkeypatch.setattr(host_state, "_CNI_DIR", cni_dir)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(shutil, "which", which)
    missing = host_state.missing_requirements()
    assert len(missing) == len(expected), missing
    for got, want in zip(missing, expected, strict=True):
        assert got.startswith(want), (got, want)
    if any("Debian packages" in m for m in missing):
        assert "apt-get install containerd runc" in missing[-1]  # the whole list, from apt/node.txt
