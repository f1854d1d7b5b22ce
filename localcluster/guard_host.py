"""Run `dsguard guard` on the host against a cluster, as a child process.

    with HostGuard(cluster, policy_files=[policy], lease_name="t1") as guard:
        ...  # the guard watches the cluster and acts on it
        guard.kill()  # SIGKILL, as an OOM kill or a node loss would
        guard.start()  # the same guard (identity, lease, flags) again

The guard serves /healthz, /readyz (every watch listed) and /metrics over plain HTTP on a free
loopback port; start() waits for /readyz. Without policy_files it watches the cluster's
DaemonSetPolicies, and the CRD is applied first. Leader election is on by default, on a Lease in the
`dsguard` namespace (created if missing), so several HostGuards with the same lease name are a
replicated guard. Each HostGuard sets POD_NAME to its identity, so the Events it records name it
as their reportingInstance. Used by the end-to-end tests and bench/guard_reaction.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster, _set_pdeathsig
from localcluster.host_process import log_tail, stop_group, wait_ready
from localcluster.webhook_host import CRD, REPO, _free_port

LEASE_NAMESPACE = "dsguard"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessStats:
    rss_bytes: int  # VmRSS
    hwm_bytes: int  # VmHWM: the peak RSS so far
    cpu_seconds: float  # user + system


def process_stats(pid: int) -> ProcessStats:
    """VmRSS, VmHWM and CPU seconds of a live process, from /proc."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # reported in kB
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_comm = stat[stat.rindex(")") + 2 :].split()  # comm may contain spaces
    utime, stime = int(after_comm[11]), int(after_comm[12])  # fields 14 and 15 of proc(5)
    return ProcessStats(fields.get("VmRSS", 0), fields.get("VmHWM", 0), (utime + stime) / CLK_TCK)


class HostGuard:
    """`dsguard guard` as a child process (its own process group); a context manager."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        policy_files: Sequence[Path] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        identity: str | None = None,
        lease_name: str = "dsguard-guard",
        lease_namespace: str = LEASE_NAMESPACE,
        lease_duration: float | None = None,
        leader_election: bool = True,
        tick: float | None = None,
        log_level: str = "info",
        python_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        die_with_parent: bool = True,
    ) -> None:
        self.cluster = cluster
        self.policy_files = tuple(policy_files)
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.identity = identity or f"guard-{uuid.uuid4().hex[:8]}"
        self.lease_name = lease_name
        self.lease_namespace = lease_namespace
        self.lease_duration = lease_duration
        self.leader_election = leader_election
        self.tick = tick
        self.log_level = log_level
        self.python_args = tuple(python_args)  # before `-m dsguard.cli`, e.g. a profiler's `-m x ...`
        self.startup_timeout = startup_timeout
        # SIGKILLed when the thread that started it ends (PR_SET_PDEATHSIG), so call start() from
        # a thread that lives as long as the guard should (the main thread, not asyncio.to_thread)
        self.die_with_parent = die_with_parent
        self.port = 0
        self.log_path = cluster.logs_dir / f"dsguard-guard-{self.identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the guard was never started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, *self.python_args, "-m", "dsguard.cli", "guard",
            "--kubeconfig", str(self.cluster.kubeconfig),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--identity", self.identity,
            "--lease-namespace", self.lease_namespace, "--lease-name", self.lease_name,
            "--log-level", self.log_level,
            *(arg for f in self.policy_files for arg in ("--policy-file", str(f))),
        ]  # fmt: skip
        if not self.leader_election:
            cmd.append("--no-leader-election")
        if self.lease_duration is not None:
            cmd += ["--lease-duration", f"{self.lease_duration:g}"]
        if self.tick is not None:
            cmd += ["--tick", f"{self.tick:g}"]
        return [*cmd, *self.extra_args]

    def ensure_lease_namespace(self) -> None:
        if self.cluster.kubectl("get", "namespace", self.lease_namespace, check=False).returncode == 0:
            return
        proc = self.cluster.kubectl("create", "namespace", self.lease_namespace, check=False)
        if proc.returncode != 0 and "AlreadyExists" not in proc.stderr:  # another guard raced us
            raise RuntimeError(f"creating namespace {self.lease_namespace}: {proc.stderr.strip()}")

    def ensure_crd(self) -> None:
        self.cluster.kubectl("apply", "-f", str(CRD))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/daemonsetpolicies.dsguard.io"
        )

    def start(self, *, wait: bool = True) -> Self:
        """Start the process (again, after kill() or stop()); with wait, until /readyz answers 200."""
        if self.alive():
            raise RuntimeError(f"guard {self.identity} is already running (pid {self.pid})")
        if self.starts == 0:
            if self.leader_election:
                self.ensure_lease_namespace()
            if not self.policy_files:
                self.ensure_crd()  # it watches the cluster's DaemonSetPolicies
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update({"POD_NAME": self.identity, "PYTHONUNBUFFERED": "1", **self.env})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if self.die_with_parent else None,
            )
        self.starts += 1
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        wait_ready(
            f"{self.base_url}/readyz", what=f"dsguard guard {self.identity}", proc=self.proc,
            log_path=self.log_path, timeout=self.startup_timeout,
        )  # fmt: skip

    # -- observing ------------------------------------------------------------------------
    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=5) as resp:  # noqa: S310
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stats(self) -> ProcessStats:
        return process_stats(self.pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the process group: no lease release, no alert drain."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the guard releases its lease and drains alerts), SIGKILL after `timeout`."""
        stop_group(self.proc, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
