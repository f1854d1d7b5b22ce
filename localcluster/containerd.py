"""containerd for the real node: its configuration, start, image import and task cleanup.

Debian's containerd (1.6) runs with its own root, state directory and socket, so it never meets
a containerd the machine may run. The settings are the ones a trial on this kind of machine
proved (../shared/REAL_NODE.md in the project notes):

* ``restrict_oom_score_adj = true``: root in this VM lacks CAP_SYS_RESOURCE, so runc cannot give
  the pause container its -998 OOM score, and every sandbox would fail with
  ``can't get final child's PID from pipe: EOF``;
* the sandbox image is the local pause image (no registry), AppArmor off, cgroupfs (no systemd);
* the CNI conflist (bridge cni0 + portmap) in our own directory, the Debian plugins in
  /usr/lib/cni; network namespaces mounted under the state directory and runc's state under
  it too, so teardown finds every one of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CRI_NAMESPACE", "ContainerdError", "ContainerdPaths", "ctr", "write_config"]

CRI_NAMESPACE = "k8s.io"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
#: containerd 1.6 puts every shim's socket here, whatever its own state dir (defaults.DefaultStateDir).
SHIM_SOCKET_DIR = Path("/run/containerd/s")


class ContainerdError(RuntimeError):
    """A ctr command failed; the message has its output."""


@dataclass(frozen=True)
class ContainerdPaths:
    """Where one containerd keeps its things. `state` is short and under /run: the socket path
    must fit a unix socket address (108 bytes) whatever the work directory is."""

    root: Path  # content store, snapshots (the work directory)
    state: Path  # socket, runc state, network namespace mounts
    config: Path
    cni_conf_dir: Path
    cni_data_dir: Path

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.state / "runc"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"


def write_config(paths: ContainerdPaths, *, sandbox_image: str, pod_subnet: str, gateway: str) -> None:
    """containerd's config.toml and the CNI conflist."""
    paths.config.parent.mkdir(parents=True, exist_ok=True)
    paths.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    # TOML written by hand: one fixed document whose only variables are our own paths.
    paths.config.write_text(
        f"""version = 2
root = {json.dumps(str(paths.root))}
state = {json.dumps(str(paths.state))}
# opt: would install into /opt/containerd; tracing, aufs, zfs, btrfs, devmapper: unused here
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = {json.dumps(str(paths.socket))}

[{cri}]
  sandbox_image = {json.dumps(sandbox_image)}
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [{cri}.cni]
    bin_dir = {json.dumps(CNI_BIN_DIR)}
    conf_dir = {json.dumps(str(paths.cni_conf_dir))}
    max_conf_num = 1

  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        BinaryName = {json.dumps(RUNC)}
        Root = {json.dumps(str(paths.runc_root))}
        SystemdCgroup = false
"""
    )
    conflist = {
        "cniVersion": "1.0.0",
        "name": "dsguard-local",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_subnet, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (paths.cni_conf_dir / "10-dsguard.conflist").write_text(json.dumps(conflist, indent=2))


def ctr(
    socket: Path, *args: str, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `ctr --address SOCKET -n k8s.io ARGS` (list arguments, no shell)."""
    cmd = ["ctr", "--address", str(socket), "--namespace", CRI_NAMESPACE, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise ContainerdError(f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def answers(socket: Path) -> bool:
    """containerd serves its API on socket (`ctr version` reaches the server)."""
    if not socket.exists():
        return False
    return ctr(socket, "version", timeout=5.0, check=False).returncode == 0


def import_image(socket: Path, archive: Path) -> None:
    """Import an OCI or docker archive into the CRI namespace (unpacked for the CRI's snapshotter)."""
    ctr(socket, "images", "import", str(archive), timeout=600.0)


def images(socket: Path) -> list[str]:
    out = ctr(socket, "images", "list", "--quiet").stdout
    return [ln.strip() for ln in out.splitlines() if ln.strip()]


def kill_tasks(socket: Path, *, timeout: float = 20.0) -> list[str]:
    """SIGKILL every task (container process tree) of the CRI namespace and delete them, then the
    containers: each shim exits cleanly (removing its socket). The task ids still there."""
    tasks = _task_ids(socket)
    for tid in tasks:
        ctr(socket, "tasks", "kill", "--all", "--signal", "SIGKILL", tid, check=False, timeout=10.0)
    deadline = time.monotonic() + timeout
    remaining = list(tasks)
    while remaining and time.monotonic() < deadline:
        for tid in list(remaining):
            if ctr(socket, "tasks", "delete", "--force", tid, check=False, timeout=10.0).returncode == 0:
                remaining.remove(tid)
        if remaining:
            time.sleep(0.2)
            remaining = [t for t in remaining if t in _task_ids(socket)]
    containers = [
        ln.split()[0]
        for ln in ctr(socket, "containers", "list", "--quiet", check=False).stdout.splitlines()
        if ln
    ]
    for cid in containers:
        ctr(socket, "containers", "delete", cid, check=False, timeout=10.0)
    return remaining


def _task_ids(socket: Path) -> list[str]:
    proc = ctr(socket, "tasks", "list", "--quiet", check=False, timeout=10.0)
    return [ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()] if proc.returncode == 0 else []


def shim_socket(address: Path, container_id: str) -> Path:
    """The socket of the shim of container (or sandbox) container_id under the containerd at
    address: runtime/v2/shim.SocketAddress, sha256 of "<address>/<namespace>/<id>". A shim that is
    killed, not shut down, leaves it behind."""
    digest = hashlib.sha256(os.path.join(str(address), CRI_NAMESPACE, container_id).encode()).hexdigest()
    return SHIM_SOCKET_DIR / digest


def container_ids(socket: Path, runc_root: Path) -> set[str]:
    """Every container id this containerd knows (when it answers) or runc still has state for."""
    ids: set[str] = set()
    if answers(socket):
        out = ctr(socket, "containers", "list", "--quiet", check=False).stdout
        ids.update(ln.split()[0] for ln in out.splitlines() if ln.strip())
    ns_root = runc_root / CRI_NAMESPACE
    if ns_root.is_dir():
        ids.update(d.name for d in ns_root.iterdir() if d.is_dir())
    return ids


def runc_containers(runc_root: Path) -> list[str]:
    """Containers runc still knows under runc_root (one directory per namespace)."""
    found: list[str] = []
    if not runc_root.is_dir():
        return found
    for ns_root in runc_root.iterdir():
        proc = subprocess.run(
            [RUNC, "--root", str(ns_root), "list", "--quiet"], capture_output=True, text=True, check=False
        )
        found += [f"{ns_root}/{c}" for c in proc.stdout.split()]
    return found


def delete_runc_containers(runc_root: Path) -> Sequence[str]:
    """`runc delete --force` what runc still knows under runc_root (after containerd is gone)."""
    for entry in runc_containers(runc_root):
        ns_root, cid = entry.rsplit("/", 1)
        subprocess.run([RUNC, "--root", ns_root, "delete", "--force", cid], capture_output=True, check=False)
    return runc_containers(runc_root)
