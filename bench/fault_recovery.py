"""How long dsguard takes to recover from control-plane faults, on the real control plane.

The world of tests/cluster/test_faults_etcd.py (tests/support/fault_world.py): a control plane of
its own, the webhook and a guard on the host watching DaemonSetPolicies, kwok nodes and a
DaemonSet. Every time is on this process's monotonic clock, from the moment the fault ended (etcd
healthy again, or the proxy cut) to what is named:

  policy change, no fault   baseline: a DaemonSetPolicy change until the webhook applies it (a
                            server-side dry run shows the toleration it adds)
  etcd restart              etcd SIGKILLed, started again: the same policy change made right
                            after; the guard's relists (none expected: the apiserver resumes its
                            etcd watches, so no client watch ends)
  etcd restart + compaction etcd compacted at its current revision first (as the apiserver's
                            compactor does every 5 minutes): until every watch of the guard has
                            listed again (dsguard_guard_watch_lists_total), and the policy change
  410 Gone (no watch cache) the same on a control plane with --watch-cache=false, where the
                            expiry reaches each watch as 410 Gone: until every watch relisted
  leader killed             baseline: two guard replicas, the leader SIGKILLed: until the other
                            leads (dsguard_guard_leader 1)
  leader cut (blackhole,    the leader behind a TCP proxy (tests/support/tcp_proxy.py), cut: until
  reset)                    it stepped down (its dsguard_guard_leader 0), until the other leads

    .venv/bin/python bench/fault_recovery.py [--runs 3] [--lease-seconds 6] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from localcluster.guard_host import LEASE_NAMESPACE, HostGuard  # noqa: E402
from tests.support.fault_world import FaultWorld  # noqa: E402
from tests.support.polling import poll  # noqa: E402
from tests.support.tcp_proxy import TcpProxy, kubeconfig_through  # noqa: E402
from tests.support.tls import write_tls_files  # noqa: E402

Figures = dict[str, list[float]]


def timed(predicate: Callable[[], object], what: str, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    poll(predicate, what=what, timeout=timeout, interval=0.05)
    return time.monotonic() - t0


def policy_change(w: FaultWorld, require: bool) -> float:
    """Apply the policy with (or without) the required toleration: seconds until the webhook shows it."""
    t0 = time.monotonic()
    if require:
        w.require_fault_toleration()
    else:
        w.apply_policy()
    poll(lambda: w.webhook_adds_the_toleration() == require, what="the webhook to apply the policy change",
         timeout=120, interval=0.05)  # fmt: skip
    return time.monotonic() - t0


def etcd_restart(w: FaultWorld, figures: Figures, label: str, *, compact: bool, require: bool) -> None:
    c = w.cluster
    lists = w.guard_lists()
    if compact:
        for i in range(3):
            c.kubectl("create", "configmap", f"bump-{time.monotonic_ns()}-{i}", "-n", w.ns)
        c.compact_etcd()
    c.stop_component("etcd", grace=0)
    t_down = time.monotonic()
    poll(w.etcd_down_seen, what="the apiserver to see etcd gone", timeout=30, interval=0.05)
    c.start_component("etcd")
    t_up = time.monotonic()
    figures.setdefault(f"{label}: etcd down (s)", []).append(t_up - t_down)
    if compact:
        poll(lambda: w.relisted_since(lists), what="every watch of the guard to list again", timeout=120,
             interval=0.05)  # fmt: skip
        figures.setdefault(f"{label}: every guard watch relisted", []).append(time.monotonic() - t_up)
    figures.setdefault(f"{label}: policy change seen by the webhook", []).append(policy_change(w, require))
    if not compact:
        after = w.guard_lists()
        figures.setdefault(f"{label}: guard watches that relisted (count)", []).append(
            sum(after[r] > lists[r] for r in lists)
        )


def etcd_faults(args: argparse.Namespace, workdir: Path, figures: Figures) -> None:
    tls = write_tls_files(workdir / "tls")
    with FaultWorld(workdir / "cache", tls) as w:
        require = True
        for _ in range(args.runs):
            figures.setdefault("baseline, no fault: policy change seen by the webhook", []).append(
                policy_change(w, require)
            )
            require = not require
        for _ in range(args.runs):
            etcd_restart(w, figures, "etcd restart", compact=False, require=require)
            require = not require
        for _ in range(args.runs):
            etcd_restart(w, figures, "etcd restart + compaction (watch cache)", compact=True, require=require)
            require = not require
        lease_faults(args, w, figures)
    with FaultWorld(workdir / "nocache", tls, apiserver_args=("--watch-cache=false",)) as w:
        for _ in range(args.runs):
            before = w.guard_restarts("gone")
            etcd_restart(w, figures, "410 Gone (no watch cache)", compact=True, require=require)
            require = not require
            gone = w.guard_restarts("gone")
            figures.setdefault("410 Gone (no watch cache): guard watches that got 410 (count)", []).append(
                sum(gone[r] > before[r] for r in gone)
            )


def leads(g: HostGuard) -> bool:
    return g.metric("dsguard_guard_leader") == 1


def steps_down(g: HostGuard) -> bool:
    return g.metric("dsguard_guard_leader") == 0


def lease_faults(args: argparse.Namespace, w: FaultWorld, figures: Figures) -> None:
    c = w.cluster
    lease = "bench-lease"
    n = args.lease_seconds

    def replica(kubeconfig: Path | None = None) -> HostGuard:
        return HostGuard(c, lease_name=lease, lease_duration=n, tick=0.2, kubeconfig=kubeconfig)

    def kill_leader(first: HostGuard, second: HostGuard) -> None:
        leader, other = (first, second) if leads(first) else (second, first)
        leader.kill()
        figures.setdefault("leader killed (baseline): the other leads", []).append(
            timed(functools.partial(leads, other), "the other to lead", timeout=n * 5)
        )
        leader.start()

    first, second = replica().start(), replica().start()
    try:
        for _ in range(args.runs):
            poll(lambda: leads(first) or leads(second), what="a leader", timeout=n * 5)
            kill_leader(first, second)
    finally:
        first.stop()
        second.stop()

    def cut_leader(proxy: TcpProxy, cut: str, behind: HostGuard, direct: HostGuard) -> None:
        t0 = time.monotonic()
        getattr(proxy, cut)()
        poll(functools.partial(steps_down, behind), what="the cut-off leader to step down", timeout=n * 5,
             interval=0.05)  # fmt: skip
        figures.setdefault(f"leader cut ({cut}): it stepped down", []).append(time.monotonic() - t0)
        poll(functools.partial(leads, direct), what="the other to lead", timeout=n * 5, interval=0.05)
        figures.setdefault(f"leader cut ({cut}): the other leads", []).append(time.monotonic() - t0)

    with TcpProxy(c.ports.apiserver) as proxy:
        via = kubeconfig_through(proxy, c.kubeconfig, w.workdir / "via-proxy.kubeconfig")
        for cut in ("blackhole", "reset"):
            for _ in range(args.runs):
                c.kubectl("delete", "lease", lease, "-n", LEASE_NAMESPACE, "--ignore-not-found")
                behind = replica(kubeconfig=via).start()
                poll(functools.partial(leads, behind), what="the proxied guard to lead", timeout=n * 5)
                direct = replica().start()
                try:
                    cut_leader(proxy, cut, behind, direct)
                finally:
                    proxy.restore()
                    behind.stop()
                    direct.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--lease-seconds", type=int, default=6, help="the guards' --lease-duration (renew deadline 2/3)"
    )
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dsguard-faults-")).resolve()
    figures: Figures = {}
    t0 = time.monotonic()
    etcd_faults(args, workdir, figures)
    deadline = args.lease_seconds * 2 / 3
    print(f"\nfault recovery, {args.runs} runs each (seconds unless a count; lease {args.lease_seconds}s, "
          f"renew deadline {deadline:.1f}s); {time.monotonic() - t0:.0f}s in all")  # fmt: skip
    width = max(len(k) for k in figures)
    print(f"{'':{width}}  {'median':>7} {'min':>7} {'max':>7}")
    for name, values in figures.items():
        print(f"{name:{width}}  {statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}")


if __name__ == "__main__":
    main()
