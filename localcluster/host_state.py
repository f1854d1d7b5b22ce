"""What a real node needs from the machine, the machine-wide state it leaves, and its removal.

A real node (localcluster/realnode.py) changes more than its work directory: iptables and
ip6tables chains (kube-proxy's and the kubelet's KUBE-*, the CNI plugins' CNI-*), the cni0
bridge, kubepods cgroups, mounts (the kubelet's root bind mount, pod volumes, container root
filesystems, network namespaces) and a few sysctls. This module finds and removes exactly
those, so a stopped node leaves the machine as it found it, and `leftovers()` says what remains
(the teardown test's check).

Only one real node can run on a machine at a time: cni0, the chains and /kubepods are
machine-wide names.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "BRIDGE",
    "CGROUP_ROOT",
    "NO_REAL_NODE_ENV",
    "PACKAGES_FILE",
    "SYSCTLS",
    "cgroup_dirs",
    "chains",
    "leftovers",
    "missing_requirements",
    "mount_points",
    "mounts_under",
    "processes_with",
    "remove_bridge",
    "remove_cgroups",
    "remove_chains",
    "unmount_under",
]

HERE = Path(__file__).resolve().parent
#: The Debian packages a real node runs on, one a line; the Makefile and .ci/run install them.
PACKAGES_FILE = HERE / "apt" / "node.txt"
#: Set to 1 to run the test suite without the real-node tests (a laptop without root).
NO_REAL_NODE_ENV = "DSGUARD_NO_REAL_NODE"
BRIDGE = "cni0"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Chain name prefixes of kube-proxy, the kubelet and the CNI plugins (bridge ipMasq, portmap).
CHAIN_PREFIXES = ("KUBE-", "CNI-")
#: sysctls the node needs (set at start, restored at stop).
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
#: sysctls the kubelet sets itself (setupKernelTunables, protectKernelDefaults off): restored at stop.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)

_COMMANDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "iptables-save": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "umount": "mount",
    "gcc": "gcc",
}
_CNI_DIR = Path("/usr/lib/cni")
_FILESYSTEMS = Path("/proc/filesystems")
_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
_CGROUP_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer", "cpuset")


def packages() -> list[str]:
    """The package list: names separated by blanks or lines, `#` starts a comment."""
    return [pkg for ln in PACKAGES_FILE.read_text().splitlines() for pkg in ln.partition("#")[0].split()]


def missing_requirements() -> list[str]:
    """What this machine lacks to run a real node, each with its fix; [] when it can."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (containerd, the kubelet and kube-proxy need it): run as root")
    fss = _FILESYSTEMS.read_text() if _FILESYSTEMS.exists() else ""
    if "overlay" not in fss.split():
        missing.append("the overlay filesystem (containerd's snapshotter): `modprobe overlay`")
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    if not v2:
        absent = [c for c in _CGROUP_CONTROLLERS if not (CGROUP_ROOT / c / "cgroup.procs").exists()]
        if absent:
            missing.append(f"cgroup v1 controllers {', '.join(absent)} mounted under {CGROUP_ROOT}")
    need_pkgs = sorted({pkg for cmd, pkg in _COMMANDS.items() if shutil.which(cmd) is None})
    if not all((_CNI_DIR / p).exists() for p in _CNI_PLUGINS):
        need_pkgs.append("containernetworking-plugins")
    if need_pkgs:
        missing.append(
            f"Debian packages {', '.join(need_pkgs)}: `make node-packages` "
            f"(apt-get install {' '.join(packages())})"
        )
    return missing


# --- processes --------------------------------------------------------------------------------


def processes_with(needle: str) -> list[int]:
    """Pids whose command line contains needle (e.g. a containerd socket path only ours use)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_pids(pids: Iterable[int], *, wait: float = 5.0) -> list[int]:
    """SIGKILL pids and wait for them to go; the survivors."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# --- mounts -----------------------------------------------------------------------------------


def mount_points() -> list[str]:
    """Every mount point of this mount namespace (from /proc/self/mountinfo)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4].encode().decode("unicode_escape") for line in lines]  # \040 for spaces


def mounts_under(prefixes: Sequence[Path]) -> list[str]:
    """Mount points at or under any of prefixes, deepest first."""
    roots = [str(p) for p in prefixes]
    found = [m for m in mount_points() if any(m == r or m.startswith(r + "/") for r in roots)]
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unmount_under(prefixes: Sequence[Path]) -> list[str]:
    """Unmount everything at or under prefixes (deepest first, lazily if busy); what remains."""
    for _ in range(3):  # a mount may be stacked on another at the same point
        points = mounts_under(prefixes)
        if not points:
            return []
        for point in points:
            proc = subprocess.run(["umount", point], capture_output=True, check=False)
            if proc.returncode != 0:
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    return mounts_under(prefixes)


# --- network ----------------------------------------------------------------------------------


def bridge_exists() -> bool:
    return Path("/sys/class/net", BRIDGE).exists()


def remove_bridge() -> None:
    if bridge_exists():
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)


def _save(cmd: str) -> str:
    if shutil.which(cmd) is None:
        return ""
    proc = subprocess.run([cmd], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _ours(name: str) -> bool:
    return name.startswith(CHAIN_PREFIXES)


def chains() -> list[str]:
    """KUBE-*/CNI-* chains in any table of iptables and ip6tables, as 'ip6tables nat KUBE-X'."""
    found = []
    for family in ("iptables", "ip6tables"):
        table = ""
        for line in _save(f"{family}-save").splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and _ours(line[1:].split()[0]):
                found.append(f"{family} {table} {line[1:].split()[0]}")
    return found


def remove_chains() -> list[str]:
    """Delete every rule that jumps to a KUBE-*/CNI-* chain from another chain, then flush and
    delete those chains, in iptables and ip6tables; the chains still there afterwards."""
    for family in ("iptables", "ip6tables"):
        table = ""
        ours: dict[str, list[str]] = {}
        foreign_rules: list[tuple[str, list[str]]] = []
        for line in _save(f"{family}-save").splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and _ours(line[1:].split()[0]):
                ours.setdefault(table, []).append(line[1:].split()[0])
            elif line.startswith("-A "):
                args = shlex.split(line)
                chain = args[1]
                target = args[args.index("-j") + 1] if "-j" in args else ""
                if not _ours(chain) and _ours(target):
                    foreign_rules.append((table, args))
        for table, args in foreign_rules:
            spec = ["-D", *args[1:]]
            subprocess.run([family, "-w", "5", "-t", table, *spec], capture_output=True, check=False)
        for table, names in ours.items():
            for name in names:
                subprocess.run([family, "-w", "5", "-t", table, "-F", name], capture_output=True, check=False)
            for name in names:
                subprocess.run([family, "-w", "5", "-t", table, "-X", name], capture_output=True, check=False)
    return chains()


# --- cgroups ----------------------------------------------------------------------------------


def cgroup_dirs(name: str = "kubepods") -> list[Path]:
    """The top cgroup `name` in every mounted hierarchy (v1 controllers and the v2 one)."""
    out: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return out
    candidates = [CGROUP_ROOT / name]
    candidates += [h / name for h in CGROUP_ROOT.iterdir() if h.is_dir()]
    for c in candidates:
        if c.is_dir():
            out.append(c)
    return out


def remove_cgroups(name: str = "kubepods") -> list[str]:
    """Kill any process left in the `name` cgroups (they are the pods' and ours alone), then remove
    the cgroups, deepest first; the directories that remain."""
    tops = cgroup_dirs(name)
    pids: set[int] = set()
    for top in tops:
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    kill_pids(pids)
    for top in tops:
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for d in [*dirs, top]:
            for _ in range(20):  # a just-killed task may leave the cgroup a moment later
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
    return [str(d) for d in cgroup_dirs(name)]


# --- sysctls ----------------------------------------------------------------------------------


def read_sysctls(keys: Iterable[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        with contextlib.suppress(OSError):
            out[key] = Path("/proc/sys", key).read_text().strip()
    return out


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(value)


# --- what is left -----------------------------------------------------------------------------


def leftovers(*, needles: Sequence[str], mount_prefixes: Sequence[Path]) -> list[str]:
    """Everything a real node leaves on the machine that is still there: its processes (command
    lines containing one of needles, e.g. its containerd socket path), mounts under
    mount_prefixes, cni0, KUBE-*/CNI-* chains, kubepods cgroups. [] when the machine is clean."""
    pids = sorted({pid for needle in needles for pid in processes_with(needle)})
    found = [f"process {pid} ({_cmd(pid)})" for pid in pids]
    found += [f"mount {m}" for m in mounts_under(mount_prefixes)]
    if bridge_exists():
        found.append(f"link {BRIDGE}")
    found += [f"chain {c}" for c in chains()]
    found += [f"cgroup {d}" for d in cgroup_dirs()]
    return found


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"
