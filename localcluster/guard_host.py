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
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

from localcluster.cluster import LocalCluster
from localcluster.procs import (
    Child,
    ProcessStats,
    free_port,
    http_get,
    launch,
    log_tail,
    process_stats,
    wait_ready,
)
from localcluster.webhook_host import REPO, apply_crd

LEASE_NAMESPACE = "dsguard"


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
        kubeconfig: Path | None = None,
    ) -> None:
        self.cluster = cluster
        # the cluster's admin kubeconfig, or another way to it (e.g. through a test's TCP proxy)
        self.kubeconfig = kubeconfig or cluster.kubeconfig
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
        self.child: Child | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.child is None:
            raise RuntimeError("the guard was never started")
        return self.child.pid

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def command(self) -> list[str]:
        cmd = [
            sys.executable, *self.python_args, "-m", "dsguard.cli", "guard",
            "--kubeconfig", str(self.kubeconfig),
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
        apply_crd(self.cluster)

    def start(self, *, wait: bool = True) -> Self:
        """Start the process (again, after kill() or stop()); with wait, until /readyz answers 200."""
        if self.alive():
            raise RuntimeError(f"guard {self.identity} is already running (pid {self.pid})")
        if self.starts == 0:
            if self.leader_election:
                self.ensure_lease_namespace()
            if not self.policy_files:
                self.ensure_crd()  # it watches the cluster's DaemonSetPolicies
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update({"POD_NAME": self.identity, "PYTHONUNBUFFERED": "1", **self.env})
        cmd = self.command()
        self.child = launch(
            cmd, log=self.log_path, cwd=REPO, env=env, die_with_parent=self.die_with_parent,
            header=f"--- start {self.starts + 1}: {' '.join(cmd)}",
        )  # fmt: skip
        self.starts += 1
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        wait_ready(
            f"{self.base_url}/readyz", what=f"dsguard guard {self.identity}", child=self.child,
            timeout=self.startup_timeout,
        )  # fmt: skip

    # -- observing ------------------------------------------------------------------------
    def metrics_text(self) -> str:
        status, body = http_get(f"{self.base_url}/metrics", timeout=5)
        if status != 200:
            raise RuntimeError(
                f"guard {self.identity} /metrics: HTTP {status}: {body.decode(errors='replace')}"
            )
        return body.decode()

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
        if self.child is not None:
            self.child.kill()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the guard releases its lease and drains alerts), SIGKILL after `timeout`."""
        if self.child is not None:
            self.child.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
