"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes and pods), all built from pinned sources by
localcluster/gobuild/build.sh.

    with LocalCluster() as c:
        c.kubectl("get", "nodes")

Every process binds 127.0.0.1 only, on ports picked free at start. Each runs in its own
process group (so stopping it also stops anything it spawned) with its output in
``<workdir>/logs/<component>.log``. ``<workdir>/state.json`` records pids and ports, so a
cluster started detached (``python -m localcluster up``) can be stopped by another process.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from localcluster import host_state
from localcluster.binaries import ensure_binaries, versions
from localcluster.image import latest_image
from localcluster.pki import Pki, generate_pki
from localcluster.procs import (
    NotReady,
    ProcessExited,
    free_ports,
    http_get,
    launch,
    listening_pids,
    log_tail,
    proc_stat,
    stop_group,
    wait_ready,
)
from localcluster.realnode import RealNode, RealNodeBusy, RealNodeError, host_ip

__all__ = [
    "DEFAULT_CONTROLLERS",
    "DEFAULT_STAGES",
    "ClusterBusy",
    "ClusterError",
    "ComponentError",
    "KubectlError",
    "LocalCluster",
    "default_workdir",
    "start_when_node_free",
]

HERE = Path(__file__).resolve().parent
DEFAULT_STAGES = HERE / "kwok" / "stages.yaml"
REPO_ROOT = HERE.parent

SERVICE_CIDR = "10.96.0.0/16"
FIRST_SERVICE_IP = "10.96.0.1"
#: kwok hands out fake pod IPs from here; nothing is bound to them. Not the real node's pod range
#: (realnode.POD_CIDR, 10.244.0.0/16), so a fake IP never shadows a real pod's.
KWOK_POD_CIDR = "10.250.0.0/16"
NODE_IP = "127.0.0.1"  # what kwok nodes report as InternalIP, so nothing ever dials elsewhere
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_ANNOTATION_SELECTOR = "kwok.x-k8s.io/node=fake"
STATE_VERSION = 1
ALWAYS_ALLOW_PATHS = "/healthz,/readyz,/livez,/metrics"

#: kube-controller-manager controllers that run. The rest (job, cronjob, statefulset, volumes,
#: certificates, ...) are off: nothing here needs them and every controller costs informers and
#: CPU on a 2-core machine.
DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "daemonset-controller",  # the subject of dsguard
    "serviceaccount-controller",  # the `default` ServiceAccount pods need in each namespace
    "serviceaccount-token-controller",  # legacy SA token Secrets (--service-account-private-key-file)
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt ConfigMap in each namespace
    "namespace-controller",  # namespace deletion
    "garbage-collector-controller",  # ownerReference cascades (DaemonSet -> pods/revisions)
    "node-lifecycle-controller",  # node.kubernetes.io/not-ready|unreachable taints
    "taint-eviction-controller",  # NoExecute taint evictions (DaemonSet pods tolerate them)
    "pod-garbage-collector-controller",  # pods bound to deleted nodes
    "clusterrole-aggregation-controller",  # rules of the aggregated admin/edit/view roles
    # What dsguard's own chart and base need on a real node (Deployments, PDBs, Services). On
    # always: one configuration, and the kwok-only tests pass with them on.
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "disruption-controller",
)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The cluster could not be started, stopped or reached."""


class ClusterBusy(ClusterError):
    """The real node could not start: another one's state is on this machine (one per machine)."""


class ComponentError(ClusterError):
    """One component failed to start or become healthy; the message has its log tail."""

    def __init__(self, component: str, reason: str, log: Path | None) -> None:
        self.component = component
        self.log = log
        tail = (log_tail(log, 40) if log.exists() else "(no log)") if log else ""
        where = f"\n--- last lines of {log} ---\n{tail}" if log else ""
        super().__init__(f"{component}: {reason}{where}")


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; str() includes its stderr."""

    def __str__(self) -> str:
        cmd = " ".join(str(a) for a in self.cmd)
        err = (self.stderr or "").strip()
        return f"`{cmd}` exited {self.returncode}: {err}"


def default_workdir() -> Path:
    """$DSGUARD_CLUSTER_DIR, else <repo>/.cluster (used by `python -m localcluster`)."""
    env = os.environ.get("DSGUARD_CLUSTER_DIR")
    return Path(env) if env else REPO_ROOT / ".cluster"


# --- processes -------------------------------------------------------------------------


@dataclass
class _Component:
    name: str
    args: list[str]
    log: Path
    port: int
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    pid: int = 0
    pgid: int = 0
    start_time: int = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "pgid": self.pgid,
            "start_time": self.start_time,
            "port": self.port,
            "log": str(self.log),
            "args": self.args,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _Component:
        return cls(
            name=str(d["name"]),
            args=[str(a) for a in d["args"]],
            log=Path(d["log"]),
            port=int(d["port"]),
            pid=int(d["pid"]),
            pgid=int(d["pgid"]),
            start_time=int(d["start_time"]),
        )

    def alive(self) -> bool:
        """Is the process we started still there (same pid *and* same start time)?"""
        if self.pid <= 0:
            return False
        if self.popen is not None and self.popen.poll() is not None:
            return False
        st = proc_stat(self.pid)
        return st is not None and st[0] not in ("Z", "X") and st[2] == self.start_time

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def stop(self, grace: float) -> list[int]:
        """SIGTERM its process group, SIGKILL after grace; the survivors (procs.stop_group)."""
        return stop_group(
            self.pgid, leader=self.pid, start_time=self.start_time, grace=grace, popen=self.popen
        )


@dataclass
class _Endpoints:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    kwok: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Timings:
    pki: float = 0.0
    etcd: float = 0.0
    apiserver: float = 0.0
    controllers: float = 0.0
    real_node: float = 0.0
    total: float = 0.0


class LocalCluster:
    """A loopback-only Kubernetes control plane with kwok nodes.

    Attributes (valid after start()): ``workdir``, ``kubeconfig`` (admin, O=system:masters),
    ``server`` (https://127.0.0.1:PORT), ``bin_dir``, ``logs_dir``, ``ports``, ``pki``,
    ``timings`` (seconds spent per startup phase).

    external: see LocalCluster.attach() — use an existing cluster through its kubeconfig and
    run only kwok (optionally) against it.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        bin_dir: Path | None = None,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        kwok_configs: Sequence[Path] = (DEFAULT_STAGES,),
        startup_timeout: float = 120.0,
        stop_grace: float = 10.0,
        die_with_parent: bool = True,
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        kwok_args: Sequence[str] = (),
        real_node: bool = False,
        node_images: Sequence[Path] = (),
        dsguard_image: bool = True,
    ) -> None:
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dsguard-cluster-"))
        self.workdir = self.workdir.resolve()
        self._bin_dir = bin_dir
        self.controllers = tuple(controllers)
        self.kwok_configs = tuple(Path(p).resolve() for p in kwok_configs)
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.die_with_parent = die_with_parent
        self.apiserver_args = tuple(apiserver_args)
        self.controller_manager_args = tuple(controller_manager_args)
        self.kwok_args = tuple(kwok_args)
        self.real_node_wanted = real_node
        self.node_images = tuple(Path(p) for p in node_images)
        #: A starting real node imports the latest built dsguard image (`make image`), if any.
        self.dsguard_image = dsguard_image
        #: The real node (real_node=True), once started: its containerd socket, processes, timings.
        self.real_node: RealNode | None = None
        self.host_ip = ""

        self.logs_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.state_file = self.workdir / "state.json"
        self.server = ""
        self.ports = _Endpoints()
        self.pki: Pki | None = None
        self.timings = _Timings()
        self.external = False
        self._run_kwok = True
        self._components: list[_Component] = []
        self._started = False
        self._atexit_registered = False

    # -- public API ---------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @classmethod
    def attach(
        cls,
        kubeconfig: Path | str,
        *,
        workdir: Path | str | None = None,
        run_kwok: bool = True,
        kwok_configs: Sequence[Path] = (DEFAULT_STAGES,),
        bin_dir: Path | None = None,
    ) -> LocalCluster:
        """Use an existing cluster (e.g. kind) instead of starting a control plane.

        start() then only checks the cluster answers and, if run_kwok, starts the built kwok
        (with the dsguard stages) against it, managing only nodes annotated
        kwok.x-k8s.io/node=fake. stop() stops that kwok and nothing else.
        """
        c = cls(workdir, bin_dir=bin_dir, kwok_configs=kwok_configs)
        c.external = True
        c._run_kwok = run_kwok
        c.kubeconfig = Path(kubeconfig).resolve()
        c.server = _server_from_kubeconfig(c.kubeconfig)
        return c

    @classmethod
    def from_state(cls, workdir: Path | str) -> LocalCluster:
        """A handle on a cluster started (detached) earlier in workdir, from its state.json."""
        workdir = Path(workdir).resolve()
        state_file = workdir / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError as exc:
            raise ClusterError(f"no cluster state in {workdir} (no state.json)") from exc
        if state.get("version") != STATE_VERSION:
            raise ClusterError(f"{state_file}: unknown state version {state.get('version')!r}")
        c = cls(workdir, bin_dir=Path(state["bin_dir"]))
        c.external = bool(state.get("external", False))
        c.kubeconfig = Path(state["kubeconfig"])
        c.server = str(state["server"])
        c.ports = _Endpoints(**state["ports"])
        c._components = [_Component.from_state(d) for d in state["components"]]
        node_state = state.get("real_node")
        if node_state:
            c.real_node = RealNode.from_state(node_state, server=c.server, pki=_pki_from_dir(workdir / "pki"))
            c.real_node_wanted = True
        c._started = True
        return c

    def start(self) -> Self:
        """Start every component and wait until the cluster is usable; idempotent."""
        if self._started:
            return self
        bin_dir = self.bin_dir  # may build (a long time, cold); not counted in timings
        t0 = time.monotonic()
        self._check_not_running()
        try:
            if self.external:
                self._start_external(bin_dir)
            else:
                self._start_local(bin_dir)
        except BaseException:
            if self.real_node is not None:
                self.real_node.stop()
            self._stop_components(self.stop_grace)
            raise
        self._started = True
        self.timings.total = time.monotonic() - t0
        self.write_state()
        if self.die_with_parent and not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop every component (SIGTERM, then SIGKILL after the grace period) and check that
        no process of theirs and no listening port is left. Idempotent."""
        grace = self.stop_grace if grace is None else grace
        node_left: list[str] = []
        if self.real_node is not None:  # first: its kubelet and kube-proxy talk to the apiserver
            node_left = self.real_node.stop(grace)
            if not node_left:
                self.real_node = None
        ours = {c.pid for c in self._components} | {c.pgid for c in self._components}
        leftovers = self._stop_components(grace)
        self._started = False
        # A port counts as left over if a process of ours (one we started, or a member of
        # one of their process groups) still listens on it. Once released, a port may be
        # taken by anything else on the machine, which is not ours to judge.
        busy = []
        for port in self._all_ports():
            for pid in listening_pids(port):
                st = proc_stat(pid)
                if pid in ours or (st is not None and st[1] in ours):
                    busy.append(port)
        if not leftovers and not node_left:  # keep the state for another `down` if something survived
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        elif self.state_file.exists() or node_left:
            self.write_state()
        problems = []
        if node_left:
            problems.append(f"the real node left: {', '.join(node_left)}")
        if leftovers:
            problems.append(f"processes still running: {leftovers}")
        if busy:
            problems.append(f"ports still listening: {busy}")
        if problems:
            raise ClusterError("cluster did not stop cleanly: " + "; ".join(problems))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (list arguments, never a shell)."""
        cmd = self.kubectl_argv(*args)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl_argv(self, *args: str) -> list[str]:
        """The argv that kubectl() runs, for callers that stream (e.g. --watch) themselves."""
        return [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]

    def kubectl_popen(self, *args: str) -> subprocess.Popen[str]:
        """Start kubectl without waiting (stdout piped, text); the caller must terminate it."""
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        return subprocess.Popen(
            self.kubectl_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def kubectl_json(self, *args: str, timeout: float = 120.0) -> Any:
        """kubectl ... -o json, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def component_pids(self) -> dict[str, int]:
        pids = {c.name: c.pid for c in self._components}
        if self.real_node is not None:
            pids.update({p.name: p.pid for p in self.real_node.procs})
        return pids

    def is_running(self) -> bool:
        return bool(self._components) and all(c.alive() for c in self._components)

    def health(self) -> dict[str, str]:
        """Each component: "ok", or what is wrong with it."""
        out: dict[str, str] = {}
        for comp in self._components:
            if not comp.alive():
                out[comp.name] = "not running"
                continue
            try:
                ok = self._health_check(comp.name)()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                out[comp.name] = f"unhealthy: {exc}"
                continue
            out[comp.name] = "ok" if ok else "unhealthy"
        if self.real_node is not None:
            out.update(self.real_node.health())
        return out

    def write_state(self) -> None:
        state = {
            "version": STATE_VERSION,
            "external": self.external,
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "bin_dir": str(self.bin_dir),
            "logs_dir": str(self.logs_dir),
            "ports": self.ports.as_dict(),
            "components": [c.to_state() for c in self._components],
            # the real node: pids, paths and its containerd socket (`make image` imports through it)
            "real_node": self.real_node.to_state() if self.real_node is not None else None,
            # where `make image` (localcluster/image.py) imports dsguard's image into a running cluster
            "containerd_address": str(self.real_node.socket) if self.real_node is not None else None,
            "versions": versions(),
            "started_at": time.time(),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # -- faults -------------------------------------------------------------------------

    def _component(self, name: str) -> _Component:
        comp = next((c for c in self._components if c.name == name), None)
        if comp is None:
            known = ", ".join(c.name for c in self._components) or "none (not started?)"
            raise ClusterError(f"no component {name!r} in this cluster (components: {known})")
        return comp

    def stop_component(self, name: str, *, grace: float | None = None) -> None:
        """Stop one component (SIGTERM, SIGKILL after `grace`; 0: SIGKILL at once, as a crash),
        keeping its data (etcd's data dir), arguments and port for start_component()."""
        comp = self._component(name)
        left = comp.stop(self.stop_grace if grace is None else grace)
        if left:
            raise ClusterError(f"{name} did not stop: processes {left} still running")
        self.write_state()

    def start_component(self, name: str, *, timeout: float | None = None) -> None:
        """Start a stopped component again, with the same arguments, environment and port, and wait
        until it is healthy (the cluster's startup timeout by default)."""
        comp = self._component(name)
        if comp.alive():
            raise ClusterError(f"{name} is still running (pid {comp.pid}): stop_component() it first")
        self._launch(comp)
        self.write_state()
        self._wait_healthy(comp, time.monotonic() + (self.startup_timeout if timeout is None else timeout))

    def etcd_revision(self) -> int:
        """etcd's current revision (the store's, as the apiserver's resourceVersions count)."""
        return int(
            self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"\0").decode()})["header"]["revision"]
        )

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd's history up to `revision` (default: the current one), as the apiserver's own
        compactor does every 5 minutes: a watch from an older resourceVersion then gets 410 Gone.
        Returns the revision compacted at. Uses etcd's gRPC gateway (JSON over HTTP): no etcdctl."""
        rev = self.etcd_revision() if revision is None else revision
        self._etcd_post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def _etcd_post(self, path: str, body: Mapping[str, Any]) -> Any:
        if self.external or not self.ports.etcd_client:
            raise ClusterError("etcd is not ours to reach (an external cluster?)")
        conn = http.client.HTTPConnection("127.0.0.1", self.ports.etcd_client, timeout=30)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise ClusterError(f"etcd {path}: HTTP {resp.status}: {data.decode(errors='replace')[:300]}")
        return json.loads(data)

    # -- startup ------------------------------------------------------------------------

    def _check_not_running(self) -> None:
        if not self.state_file.exists():
            return
        try:
            other = LocalCluster.from_state(self.workdir)
        except (ClusterError, ValueError, KeyError):
            return
        alive = [c.name for c in other._components if c.alive()]
        if alive:
            raise ClusterError(
                f"a cluster is already running in {self.workdir} ({', '.join(alive)}); "
                "stop it first (python -m localcluster down)"
            )

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Remove only what a previous run of ours wrote.
        for name in ("pki", "etcd", "logs", "config", "kubectl-cache"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        for name in ("kubeconfig", "state.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / name).unlink()
        self.logs_dir.mkdir()
        (self.workdir / "config").mkdir()

    def _start_local(self, bin_dir: Path) -> None:
        t = time.monotonic()
        self._prepare_workdir()
        p = self.ports
        (
            p.etcd_client,
            p.etcd_peer,
            p.apiserver,
            p.controller_manager,
            p.scheduler,
            p.kwok,
        ) = free_ports(6)
        self.server = f"https://127.0.0.1:{p.apiserver}"
        if self.real_node_wanted:
            try:
                self.host_ip = host_ip()
            except RealNodeError as exc:
                raise ClusterError(str(exc)) from None
        sans = [self.host_ip] if self.host_ip else []
        pki = generate_pki(self.workdir / "pki", service_ip=FIRST_SERVICE_IP, extra_sans=sans)
        self.pki = pki
        _write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, pki.clients["admin"], "admin")
        kcm_kubeconfig = pki.dir / "kube-controller-manager.kubeconfig"
        sched_kubeconfig = pki.dir / "kube-scheduler.kubeconfig"
        _write_kubeconfig(
            kcm_kubeconfig,
            self.server,
            pki.ca.cert,
            pki.clients["kube-controller-manager"],
            "system:kube-controller-manager",
        )
        _write_kubeconfig(
            sched_kubeconfig, self.server, pki.ca.cert, pki.clients["kube-scheduler"], "system:kube-scheduler"
        )
        self.timings.pki = time.monotonic() - t

        deadline = time.monotonic() + self.startup_timeout

        t = time.monotonic()
        etcd = self._spawn("etcd", bin_dir, self._etcd_args(), p.etcd_client)
        self._wait_healthy(etcd, deadline)
        self.timings.etcd = time.monotonic() - t

        t = time.monotonic()
        apiserver = self._spawn("kube-apiserver", bin_dir, self._apiserver_args(pki), p.apiserver)
        self._wait_healthy(apiserver, deadline)
        self.timings.apiserver = time.monotonic() - t

        t = time.monotonic()
        sched_config = self.workdir / "config" / "kube-scheduler.yaml"
        sched_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(sched_kubeconfig), "qps": 100, "burst": 200},
                    "leaderElection": {"leaderElect": False},
                    "enableProfiling": False,
                }
            )
        )
        started = [
            self._spawn(
                "kube-controller-manager",
                bin_dir,
                self._controller_manager_args(pki, kcm_kubeconfig),
                p.controller_manager,
            ),
            self._spawn(
                "kube-scheduler",
                bin_dir,
                self._scheduler_args(pki, sched_config),
                p.scheduler,
            ),
            self._spawn_kwok(bin_dir, self.kubeconfig),
        ]
        for comp in started:
            self._wait_healthy(comp, deadline)
        # The serviceaccount controller works once `default` has its ServiceAccount; pods
        # are rejected by admission in a namespace without one.
        self._wait_for(
            "kube-controller-manager",
            lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            deadline,
            "the `default` ServiceAccount in namespace default never appeared",
        )
        self.timings.controllers = time.monotonic() - t
        if self.real_node_wanted:
            t = time.monotonic()
            images = list(self.node_images)
            built = latest_image() if self.dsguard_image else None
            if built is not None:
                images.append(built.archive)
            self.real_node = RealNode(
                self.workdir / "node", server=self.server, pki=pki, ip=self.host_ip, images=images,
                die_with_parent=self.die_with_parent, stop_grace=self.stop_grace,
            )  # fmt: skip
            try:
                self.real_node.start(self.api_get, timeout=self.startup_timeout)
            except RealNodeBusy as exc:
                raise ClusterBusy(str(exc)) from None
            except RealNodeError as exc:
                raise ClusterError(str(exc)) from None
            self.timings.real_node = time.monotonic() - t

    def _start_external(self, bin_dir: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("logs", "config", "kubectl-cache"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        self.logs_dir.mkdir()
        (self.workdir / "config").mkdir()
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            proc = self.kubectl("get", "--raw", "/readyz", check=False, timeout=30)
            if proc.returncode == 0:
                break
            last = proc.stderr.strip()
            if time.monotonic() >= deadline:
                raise ClusterError(f"cluster of {self.kubeconfig} ({self.server}) is not ready: {last}")
            time.sleep(1.0)
        if self._run_kwok:
            (self.ports.kwok,) = free_ports(1)
            kwok = self._spawn_kwok(bin_dir, self.kubeconfig)
            self._wait_healthy(kwok, deadline)

    def _spawn_kwok(self, bin_dir: Path, kubeconfig: Path) -> _Component:
        home = self.workdir / "config" / "kwok-home"  # keeps ~/.kwok/kwok.yaml out of it
        home.mkdir(parents=True, exist_ok=True)
        args = [
            f"--kubeconfig={kubeconfig}",
            f"--config={','.join(str(c) for c in self.kwok_configs)}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION_SELECTOR}",
            f"--node-ip={NODE_IP}",
            f"--cidr={KWOK_POD_CIDR}",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            *self.kwok_args,
        ]
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env["HOME"] = str(home)
        return self._spawn("kwok", bin_dir, args, self.ports.kwok, env=env)

    def _etcd_args(self) -> list[str]:
        p = self.ports
        client = f"http://127.0.0.1:{p.etcd_client}"
        peer = f"http://127.0.0.1:{p.etcd_peer}"
        return [
            "--name=dsguard",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=dsguard={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # a throwaway test store; fsync only costs time
            "--quota-backend-bytes=2147483648",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=5m",
            "--log-level=warn",
        ]

    def _apiserver_args(self, pki: Pki) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            *self._apiserver_network_args(),
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--cert-dir={pki.dir / 'apiserver-certdir'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--api-audiences={SA_ISSUER}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",  # DaemonSets are often privileged / hostNetwork
            f"--kubelet-client-certificate={pki.clients['apiserver-kubelet-client'].cert}",
            f"--kubelet-client-key={pki.clients['apiserver-kubelet-client'].key}",
            "--profiling=false",
            "--event-ttl=30m",
            *self.apiserver_args,
        ]

    def _apiserver_network_args(self) -> list[str]:
        if not self.host_ip:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Service endpoints would be 127.0.0.1, which Endpoints reject,
                # and nothing in this cluster connects to it.
                "--endpoint-reconciler-type=none",
            ]
        # A real node's pods reach the apiserver through the `kubernetes` Service (10.96.0.1),
        # whose endpoint is the host's address: it must listen there too.
        return [
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.host_ip}",
            "--endpoint-reconciler-type=lease",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]

    def _controller_manager_args(self, pki: Pki, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            # No --authentication/authorization-kubeconfig: without a front proxy they only
            # log errors about the missing requestheader CA. Health and metrics are open to
            # anyone on loopback instead.
            f"--authorization-always-allow-paths={ALWAYS_ALLOW_PATHS}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--tls-cert-file={pki.serving['kube-controller-manager'].cert}",
            f"--tls-private-key-file={pki.serving['kube-controller-manager'].key}",
            f"--client-ca-file={pki.ca.cert}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--controllers={','.join(self.controllers)}",
            "--node-monitor-period=2s",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--profiling=false",
            "--cluster-name=dsguard-local",
            *self.controller_manager_args,
        ]

    def _scheduler_args(self, pki: Pki, config: Path) -> list[str]:
        return [
            f"--config={config}",
            f"--authorization-always-allow-paths={ALWAYS_ALLOW_PATHS}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            f"--tls-cert-file={pki.serving['kube-scheduler'].cert}",
            f"--tls-private-key-file={pki.serving['kube-scheduler'].key}",
            f"--client-ca-file={pki.ca.cert}",
        ]

    def _spawn(
        self,
        name: str,
        bin_dir: Path,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
    ) -> _Component:
        comp = _Component(
            name=name,
            args=[str(bin_dir / name), *args],
            log=self.logs_dir / f"{name}.log",
            port=port,
            env=env,
        )
        self._launch(comp)
        self._components.append(comp)
        return comp

    def _launch(self, comp: _Component) -> None:
        child = launch(  # its own session and process group
            comp.args, log=comp.log, cwd=self.workdir, env=comp.env, die_with_parent=self.die_with_parent,
            header=f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(comp.args)}",
        )  # fmt: skip
        comp.popen = child.popen
        comp.pid = comp.pgid = child.pid
        comp.start_time = child.start_time

    # -- health -------------------------------------------------------------------------

    def _client_ssl(self) -> ssl.SSLContext:
        if self.pki is None:
            raise ClusterError("no PKI (external cluster?)")
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        admin = self.pki.clients["admin"]
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        return ctx

    def _api_get(self, path: str) -> tuple[int, bytes]:
        return self.api_get(path)

    def api_get(self, path: str, *, timeout: float = 3.0) -> tuple[int, bytes]:
        """GET a path of the apiserver as the cluster admin (status, body): health checks, and
        tests that make apiserver traffic of their own."""
        return http_get(
            f"https://127.0.0.1:{self.ports.apiserver}{path}", context=self._client_ssl(), timeout=timeout
        )

    def _health_check(self, name: str) -> Callable[[], bool]:
        if name == "etcd":
            port = self.ports.etcd_client

            def etcd_ok() -> bool:
                status, body = http_get(f"http://127.0.0.1:{port}/health")
                return status == 200 and json.loads(body).get("health") == "true"

            return etcd_ok
        if name == "kwok":
            kwok_port = self.ports.kwok
            return lambda: http_get(f"http://127.0.0.1:{kwok_port}/healthz")[0] == 200
        if self.pki is None:
            pki_dir = self.workdir / "pki"
            self.pki = _pki_from_dir(pki_dir)
        ctx = self._client_ssl()
        port, path = {
            "kube-apiserver": (self.ports.apiserver, "/readyz"),
            "kube-controller-manager": (self.ports.controller_manager, "/healthz"),
            "kube-scheduler": (self.ports.scheduler, "/healthz"),
        }[name]
        return lambda: http_get(f"https://127.0.0.1:{port}{path}", context=ctx)[0] == 200

    def _wait_healthy(self, comp: _Component, deadline: float) -> None:
        check = self._health_check(comp.name)
        self._wait_for(comp.name, check, deadline, "never became healthy")

    def _wait_for(self, name: str, check: Callable[[], bool], deadline: float, what: str) -> None:
        """check() until True (procs.wait_ready), watching component `name`; ComponentError if it
        exits or at the deadline."""
        comp = next((c for c in self._components if c.name == name), None)
        try:
            wait_ready(check, what=name, timeout=deadline - time.monotonic(), child=comp, interval=0.2)
        except ProcessExited as e:
            raise ComponentError(name, f"exited (code {e.returncode}) during startup", e.log) from None
        except NotReady as e:
            last_err = f" (last error: {e.last})" if e.error else ""
            raise ComponentError(
                name, f"{what} within {self.startup_timeout:.0f}s{last_err}", comp.log if comp else None
            ) from None

    # -- shutdown -----------------------------------------------------------------------

    def _all_ports(self) -> list[int]:
        return [p for p in self.ports.as_dict().values() if p]

    def _stop_components(self, grace: float) -> dict[str, list[int]]:
        """Stop components in reverse start order; returns any that would not die."""
        leftovers: dict[str, list[int]] = {}
        for comp in reversed(self._components):
            left = comp.stop(grace)
            if left:
                leftovers[comp.name] = left
        self._components = [c for c in self._components if c.name in leftovers]
        return leftovers

    def _atexit_stop(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                self.stop(grace=5.0)


# --- kubeconfig ----------------------------------------------------------------------------


def start_when_node_free(
    make: Callable[[int], LocalCluster], *, wait: float, on_busy: Callable[[], None] = lambda: None
) -> LocalCluster:
    """make(attempt)'s cluster (attempt 1, 2, ...), started. Only one real node runs per machine:
    while another one holds it (ClusterBusy), try again once its state is gone (or every 15 s),
    up to `wait` seconds; on_busy is called before the first wait."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        attempt += 1
        cluster = make(attempt)
        try:
            return cluster.start()
        except BaseException as exc:
            cluster.stop()
            if not isinstance(exc, ClusterBusy) or time.monotonic() > deadline:
                raise
        if attempt == 1:
            on_busy()
        with contextlib.suppress(NotReady):
            wait_ready(lambda: not host_state.leftovers(needles=[], mount_prefixes=[]), what="the real node",
                       timeout=15, interval=1)  # fmt: skip


def _write_kubeconfig(path: Path, server: str, ca: Path, client: Any, user: str) -> None:
    """A kubeconfig with the CA and client cert/key embedded (so it is self-contained; 0600)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "dsguard-local", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "dsguard-local", "context": {"cluster": "dsguard-local", "user": user}}],
        "current-context": "dsguard-local",
        "preferences": {},
    }
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)


def _server_from_kubeconfig(path: Path) -> str:
    doc = yaml.safe_load(path.read_text())
    ctx_name = doc.get("current-context")
    ctx = next((c["context"] for c in doc.get("contexts", []) if c["name"] == ctx_name), None)
    if ctx is None:
        raise ClusterError(f"{path}: no current context")
    cluster = next((c["cluster"] for c in doc.get("clusters", []) if c["name"] == ctx["cluster"]), None)
    if cluster is None:
        raise ClusterError(f"{path}: context {ctx_name} names unknown cluster {ctx['cluster']}")
    return str(cluster["server"])


def _pki_from_dir(directory: Path) -> Pki:
    from localcluster.pki import CLIENTS, CertPair

    def pair(stem: str) -> CertPair:
        return CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")

    return Pki(
        dir=directory,
        ca=pair("ca"),
        apiserver=pair("apiserver"),
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
        serving={c: pair(f"{c}-serving") for c in ("kube-controller-manager", "kube-scheduler")},
        clients={stem: pair(stem) for stem in CLIENTS},
    )
