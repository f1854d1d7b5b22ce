"""One real Kubernetes node beside the kwok ones: containerd + runc + the CNI bridge, the kubelet
and kube-proxy (built by gobuild/build_node.sh at the pinned version), joined to the local
control plane. Real containers run on it, with real pod IPs (10.244.0.0/24 on cni0), reachable
through ClusterIP Services (kube-proxy, iptables mode).

    LocalCluster(real_node=True)             # or: python -m localcluster up --real-node

Start order, each step waited for with a deadline: containerd (its API answers), the pause image
and any extra images imported, the kubelet (/healthz), the Node Ready, kube-proxy (/healthz).
stop() tears down everything the node set up (host_state.py) and raises when anything is left.

It needs root, cgroups and the overlay filesystem, and Debian's containerd, runc,
containernetworking-plugins, iptables, conntrack (localcluster/apt/node.txt;
`make node-packages`). host_state.missing_requirements() names what a machine lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster import containerd, host_state
from localcluster.binaries import ensure_node_binaries
from localcluster.oci import ImageFile, write_oci_archive
from localcluster.pki import CertPair, Pki, issue_from_ca
from localcluster.procs import NotReady, ProcessExited, free_ports, launch, proc_stat, stop_group, wait_ready

__all__ = [
    "NODE_NAME",
    "PAUSE_IMAGE",
    "POD_CIDR",
    "RealNode",
    "RealNodeBusy",
    "RealNodeError",
    "host_ip",
]

NODE_NAME = "real-node"
#: The label every real node carries (pin pods to it with a nodeSelector).
NODE_LABEL = "dsguard.local/real-node"
POD_CIDR = "10.244.0.0/16"  # kube-proxy's clusterCIDR; the node's bridge has the first /24
POD_SUBNET = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
#: A name with a registry domain: CRI would turn a bare `pause:X` into docker.io/library/pause:X.
PAUSE_IMAGE = "dsguard.local/pause:{version}"
SERVING_STEM = "node-kubelet-serving"  # in the cluster's pki dir
#: Every node's containerd state dir is under here (short: socket paths must fit 108 bytes).
STATE_ROOT = Path("/run/dsguard-node")
#: What every real node's processes hold in their command lines, whatever its work dir: the
#: config files' paths (containerd, kubelet, kube-proxy) and the shims' socket dir.
_PROCESS_MARKS = (
    "/node/config/containerd.toml",
    "/node/config/kubelet.yaml",
    "/node/config/kube-proxy.yaml",
    f"{STATE_ROOT}/",
)
#: Mounts of a real node under its work dir: the kubelet's root (and pod volumes), containerd's.
_MOUNT_MARKS = ("/node/kubelet", "/node/containerd/")


class RealNodeError(RuntimeError):
    """The real node could not start or stop cleanly; the message says what and where."""


class RealNodeBusy(RealNodeError):
    """Another real node's state is on this machine (one runs per machine): wait for it to go."""


def host_ip() -> str:
    """The machine's primary IPv4 address (the source of its default route): the node's
    InternalIP, which the apiserver advertises to pods and dials the kubelet on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: connect() on UDP only picks a route
        except OSError as exc:
            raise RealNodeError(f"no IPv4 default route for the real node's address: {exc}") from exc
        ip = str(s.getsockname()[0])
    if ip.startswith("127."):
        raise RealNodeError("the machine's only IPv4 address is loopback; a real node needs another")
    return ip


@dataclass
class _Proc:
    """A node process we started: pid and its /proc start time (the pid-reuse guard)."""

    name: str
    pid: int
    start_time: int
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        st = proc_stat(self.pid)
        return st is not None and st[0] not in ("Z", "X") and st[2] == self.start_time

    def stop(self, grace: float) -> list[int]:
        return stop_group(
            self.pid, leader=self.pid, start_time=self.start_time, grace=grace, popen=self.popen
        )

    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "log": str(self.log)}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Proc:
        return cls(str(d["name"]), int(d["pid"]), int(d["start_time"]), Path(d["log"]))


@dataclass
class NodeTimings:
    containerd: float = 0.0
    images: float = 0.0
    kubelet: float = 0.0  # to /healthz
    ready: float = 0.0  # to the Node's Ready condition
    kube_proxy: float = 0.0
    total: float = 0.0
    teardown: float = 0.0


class RealNode:
    """The real node of a LocalCluster (see the module docstring). Made by LocalCluster; holds
    its processes and paths, and its state (to_state/from_state) for a detached cluster's `down`."""

    def __init__(
        self,
        workdir: Path,
        *,
        server: str,
        pki: Pki,
        ip: str,
        name: str = NODE_NAME,
        images: Sequence[Path] = (),
        die_with_parent: bool = True,
        stop_grace: float = 10.0,
    ) -> None:
        self.workdir = workdir  # <cluster workdir>/node
        self.server = server
        self.pki = pki
        self.ip = ip
        self.name = name
        self.images = tuple(images)
        self.die_with_parent = die_with_parent
        self.stop_grace = stop_grace
        key = hashlib.sha256(str(workdir).encode()).hexdigest()[:10]
        # Short, under /run: the socket paths must fit 108 bytes whatever workdir is.
        state = STATE_ROOT / key
        self.paths = containerd.ContainerdPaths(
            root=workdir / "containerd",
            state=state,
            config=workdir / "config" / "containerd.toml",
            cni_conf_dir=workdir / "config" / "cni",
            cni_data_dir=workdir / "cni",
        )
        self.kubelet_root = workdir / "kubelet"
        self.pod_logs = workdir / "pod-logs"
        self.logs_dir = workdir / "logs"
        self.ports: dict[str, int] = {}
        self.procs: list[_Proc] = []
        self.saved_sysctls: dict[str, str] = {}
        self.timings = NodeTimings()
        #: Has this node changed the machine yet? Until it has, stop() touches nothing: the
        #: machine-wide names (cni0, chains, /kubepods) may be another running node's.
        self.touched = False
        self._shim_sockets: set[Path] = set()  # the shims' sockets under /run/containerd/s

    # -- state ----------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        """containerd's socket (`ctr --address`, `make image` imports through it)."""
        return self.paths.socket

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workdir": str(self.workdir),
            "ip": self.ip,
            "containerd_socket": str(self.paths.socket),
            "containerd_state": str(self.paths.state),
            "ports": self.ports,
            "processes": [p.to_state() for p in self.procs],
            "saved_sysctls": self.saved_sysctls,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], *, server: str, pki: Pki) -> RealNode:
        node = cls(Path(d["workdir"]), server=server, pki=pki, ip=str(d["ip"]), name=str(d["name"]))
        node.ports = {str(k): int(v) for k, v in d.get("ports", {}).items()}
        node.procs = [_Proc.from_state(p) for p in d.get("processes", [])]
        node.saved_sysctls = {str(k): str(v) for k, v in d.get("saved_sysctls", {}).items()}
        node.touched = True
        return node

    def needles(self) -> list[str]:
        """Strings only our processes' command lines hold (containerd's config and shims' socket)."""
        return [str(self.workdir) + "/", str(self.paths.state) + "/"]

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine (processes, mounts, links, chains, cgroups,
        container log links); [] when nothing is."""
        found = host_state.leftovers(needles=self.needles(), mount_prefixes=[self.workdir, self.paths.state])
        found += [f"file {p}" for p in self._container_log_links()]
        found += [f"socket {p}" for p in sorted(self._shim_sockets) if p.exists()]
        if self.paths.state.exists():
            found.append(f"directory {self.paths.state}")
        return found

    # -- start ----------------------------------------------------------------------------

    def start(self, api_get: Callable[[str], tuple[int, bytes]], timeout: float = 180.0) -> None:
        """Start containerd, import the images, start the kubelet and kube-proxy; wait for each.
        On failure the caller stops the node (stop() cleans up a half-started one too)."""
        problems = host_state.missing_requirements()
        if problems:
            raise RealNodeError("this machine cannot run a real node; it lacks: " + "; ".join(problems))
        before = host_state.leftovers(needles=[], mount_prefixes=[self.workdir, self.paths.state])
        if before:
            raise RealNodeBusy(
                "the machine holds another real node's state (only one can run at a time; "
                "`python -m localcluster down` stops a detached one; `python -m localcluster clean-node` "
                "removes what a killed one left): " + ", ".join(before[:8])
            )
        t0 = time.monotonic()
        deadline = t0 + timeout
        bin_dir = ensure_node_binaries()
        self.touched = True
        self._prepare()
        self.saved_sysctls = host_state.read_sysctls([*host_state.SYSCTLS, *host_state.KUBELET_SYSCTLS])
        host_state.write_sysctls(host_state.SYSCTLS)
        self.ports = dict(
            zip(("kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics"), free_ports(4), strict=True)
        )

        pause_version = (bin_dir.parent / "PAUSE_VERSION").read_text().strip()
        pause_ref = PAUSE_IMAGE.format(version=pause_version)
        containerd.write_config(
            self.paths, sandbox_image=pause_ref, pod_subnet=POD_SUBNET, gateway=POD_GATEWAY
        )
        t = time.monotonic()
        ctrd = self._spawn("containerd", ["containerd", "--config", str(self.paths.config)])
        self._wait("containerd", ctrd, lambda: containerd.answers(self.paths.socket), deadline)
        self.timings.containerd = time.monotonic() - t

        t = time.monotonic()
        pause_archive = self.workdir / "images" / "pause.tar"
        pause_archive.parent.mkdir(parents=True, exist_ok=True)
        write_oci_archive(
            pause_archive, pause_ref, [ImageFile("/pause", bin_dir / "pause")], entrypoint=["/pause"]
        )
        for archive in (pause_archive, *self.images):
            containerd.import_image(self.paths.socket, archive)
        self.timings.images = time.monotonic() - t

        t = time.monotonic()
        kubelet = self._spawn("kubelet", self._kubelet_args(bin_dir))
        url = f"http://127.0.0.1:{self.ports['kubelet_healthz']}/healthz"
        self._wait("kubelet", kubelet, url, deadline)
        self.timings.kubelet = time.monotonic() - t
        self._wait("kubelet", kubelet, lambda: self._node_ready(api_get), deadline, what="Node Ready")
        self.timings.ready = time.monotonic() - t

        t = time.monotonic()
        proxy = self._spawn("kube-proxy", self._kube_proxy_args(bin_dir))
        self._wait("kube-proxy", proxy, f"http://127.0.0.1:{self.ports['proxy_healthz']}/healthz", deadline)
        self.timings.kube_proxy = time.monotonic() - t
        self.timings.total = time.monotonic() - t0

    def import_image(self, archive: Path) -> None:
        """Import an image archive (OCI or docker) into the running node's containerd."""
        containerd.import_image(self.paths.socket, archive)

    def image_refs(self) -> list[str]:
        """The images in the node's containerd (CRI's namespace), by reference (not by digest)."""
        return [ref for ref in containerd.images(self.paths.socket) if not ref.startswith("sha256:")]

    def health(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self.procs:
            out[p.name] = "ok" if p.alive() else "not running"
        return out

    def _prepare(self) -> None:
        for name in ("config", "logs", "images", "cni", "kubelet", "pod-logs"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        shutil.rmtree(self.paths.root, ignore_errors=True)
        for d in (self.workdir, self.logs_dir, self.kubelet_root, self.pod_logs, self.paths.state):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.paths.state, 0o700)
        pki = self.pki
        node = issue_from_ca(
            pki, "node-kubelet", cn=f"system:node:{self.name}", org="system:nodes", client=True
        )
        proxy = issue_from_ca(pki, "node-kube-proxy", cn="system:kube-proxy", client=True)
        # The kubelet's serving certificate (else it makes a self-signed one): the apiserver dials it.
        issue_from_ca(
            pki, SERVING_STEM, cn=f"system:node:{self.name}", server=True,
            dns=[self.name, "localhost"], ips=[self.ip, "127.0.0.1"],
        )  # fmt: skip
        config = self.workdir / "config"
        config.mkdir(exist_ok=True)
        _kubeconfig(config / "kubelet.kubeconfig", self.server, pki.ca.cert, node)
        _kubeconfig(config / "kube-proxy.kubeconfig", self.server, pki.ca.cert, proxy)

    def _kubelet_args(self, bin_dir: Path) -> list[str]:
        config = self.workdir / "config"
        doc = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip,
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet_healthz"],
            "tlsCertFile": str(self.pki.dir / f"{SERVING_STEM}.crt"),
            "tlsPrivateKeyFile": str(self.pki.dir / f"{SERVING_STEM}.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,  # 1.35+ refuses cgroup v1 (this machine's) without it
            "failSwapOn": False,
            "containerRuntimeEndpoint": self.paths.endpoint,
            "imageServiceEndpoint": self.paths.endpoint,
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(self.kubelet_root / "volume-plugins"),
            # A small shared disk: no eviction or image GC because of what others store on it.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "registerNode": True,
            "nodeStatusReportFrequency": "10s",
        }
        path = config / "kubelet.yaml"
        path.write_text(yaml.safe_dump(doc))
        return [
            str(bin_dir / "kubelet"),
            f"--config={path}",
            f"--kubeconfig={config / 'kubelet.kubeconfig'}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            f"--node-labels={NODE_LABEL}=true",
            "--v=1",
        ]

    def _kube_proxy_args(self, bin_dir: Path) -> list[str]:
        config = self.workdir / "config"
        doc = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(config / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": self.name,
            "bindAddress": self.ip,
            "healthzBindAddress": f"127.0.0.1:{self.ports['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{self.ports['proxy_metrics']}",
            "iptables": {"localhostNodePorts": False},
            "conntrack": {"maxPerCore": 0, "min": 0},  # leave the host's conntrack table size alone
        }
        path = config / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(doc))
        return [str(bin_dir / "kube-proxy"), f"--config={path}", "--v=1"]

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log = self.logs_dir / f"{name}.log"
        child = launch(
            argv, log=log, cwd=self.workdir, die_with_parent=self.die_with_parent,
            header=f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}",
        )  # fmt: skip
        proc = _Proc(name, child.pid, child.start_time, log, child.popen)
        self.procs.append(proc)
        return proc

    def _wait(
        self,
        name: str,
        proc: _Proc,
        probe: str | Callable[[], bool],
        deadline: float,
        what: str = "healthy",
    ) -> None:
        try:
            left = max(0.0, deadline - time.monotonic())
            wait_ready(probe, what=f"{name} ({what})", timeout=left, child=proc, interval=0.2)
        except (ProcessExited, NotReady) as exc:
            raise RealNodeError(f"real node: {exc}") from None

    def _node_ready(self, api_get: Callable[[str], tuple[int, bytes]]) -> bool:
        status, body = api_get(f"/api/v1/nodes/{self.name}")
        if status != 200:
            return False
        conds = json.loads(body).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    # -- stop -----------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> list[str]:
        """Tear down everything the node set up, in order; what could not be removed ([] when all
        was). Safe on a half-started node, and again after a failed stop."""
        if not self.touched:
            return []
        grace = self.stop_grace if grace is None else grace
        t0 = time.monotonic()
        by_name = {p.name: p for p in self.procs}
        problems: list[str] = []
        self._shim_sockets |= {
            containerd.shim_socket(self.paths.socket, cid)
            for cid in containerd.container_ids(self.paths.socket, self.paths.runc_root)
        }
        if "kube-proxy" in by_name:
            problems += [f"kube-proxy pid {p}" for p in by_name["kube-proxy"].stop(grace)]
        if (self.workdir / "config" / "kube-proxy.yaml").exists() and not problems:
            self._kube_proxy_cleanup()
        if "kubelet" in by_name:
            problems += [f"kubelet pid {p}" for p in by_name["kubelet"].stop(grace)]
        ctrd = by_name.get("containerd")
        if ctrd is not None and ctrd.alive() and containerd.answers(self.paths.socket):
            problems += [f"task {t}" for t in containerd.kill_tasks(self.paths.socket)]
        if ctrd is not None:
            problems += [f"containerd pid {p}" for p in ctrd.stop(grace)]
        # Shims (their own process groups) and container processes a dead containerd left.
        host_state.kill_pids(host_state.processes_with(str(self.paths.state) + "/"))
        containerd.delete_runc_containers(self.paths.runc_root)
        problems += [f"cgroup {d}" for d in host_state.remove_cgroups()]
        problems += [f"mount {m}" for m in host_state.unmount_under([self.workdir, self.paths.state])]
        host_state.remove_bridge()
        problems += [f"chain {c}" for c in host_state.remove_chains()]
        for link in self._container_log_links():
            link.unlink(missing_ok=True)
        for sock in self._shim_sockets:
            sock.unlink(missing_ok=True)
        host_state.write_sysctls(self.saved_sysctls)
        if not problems:
            shutil.rmtree(self.paths.state, ignore_errors=True)
            with contextlib.suppress(OSError):  # /run/dsguard-node, when no other node's is there
                self.paths.state.parent.rmdir()
            self.procs = []
        self.timings.teardown = time.monotonic() - t0
        left = self.leftovers()
        return sorted(set(problems + left))

    def _kube_proxy_cleanup(self) -> None:
        bin_dir = ensure_node_binaries()
        log = self.logs_dir / "kube-proxy-cleanup.log"
        config = self.workdir / "config" / "kube-proxy.yaml"
        with log.open("ab") as out:
            subprocess.run(
                [str(bin_dir / "kube-proxy"), f"--config={config}", "--cleanup"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False,
            )  # fmt: skip

    def _container_log_links(self) -> list[Path]:
        """The kubelet's symlinks in /var/log/containers (a fixed path) into our pod logs."""
        links = Path("/var/log/containers")
        if not links.is_dir():
            return []
        ours = []
        for entry in links.iterdir():
            try:
                if entry.is_symlink() and os.readlink(entry).startswith(str(self.pod_logs) + "/"):
                    ours.append(entry)
            except OSError:
                continue
        return ours


def _kubeconfig(path: Path, server: str, ca: Path, client: CertPair) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [
            {"name": "node", "user": {"client-certificate": str(client.cert), "client-key": str(client.key)}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "node"}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(doc))
    os.chmod(path, 0o600)


def clean_leftovers() -> list[str]:
    """Remove what real nodes that were killed (no stop, no state.json to stop them by) left on
    the machine: their processes (found by the marks every node's command lines hold), runc
    containers, kubepods cgroups, mounts, cni0, KUBE-*/CNI-* chains, container log links and
    state dirs. Returns what could not be removed. Only for a machine where no real node runs."""
    pids = {pid for mark in _PROCESS_MARKS for pid in host_state.processes_with(mark)}
    problems = [f"process {p}" for p in host_state.kill_pids(pids)]
    for runc_root in STATE_ROOT.glob("*/runc"):
        address = runc_root.parent / "containerd.sock"
        for cid in containerd.container_ids(address, runc_root):
            containerd.shim_socket(address, cid).unlink(missing_ok=True)
        problems += [f"runc container {c}" for c in containerd.delete_runc_containers(runc_root)]
    problems += [f"cgroup {d}" for d in host_state.remove_cgroups()]
    prefixes = [Path(m) for m in host_state.mount_points() if any(mark in m for mark in _MOUNT_MARKS)]
    problems += [f"mount {m}" for m in host_state.unmount_under([*prefixes, STATE_ROOT])]
    host_state.remove_bridge()
    problems += [f"chain {c}" for c in host_state.remove_chains()]
    logs = Path("/var/log/containers")
    for link in logs.iterdir() if logs.is_dir() else []:
        with contextlib.suppress(OSError):
            if link.is_symlink() and "/node/pod-logs/" in os.readlink(link):
                link.unlink()
    if not problems:
        shutil.rmtree(STATE_ROOT, ignore_errors=True)
    return problems
