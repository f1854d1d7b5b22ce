"""How long after the kube-apiserver comes back each watch of dsguard is current again.

A real control plane (localcluster) with a few kwok nodes and a DaemonSetPolicy; `dsguard
webhook` and `dsguard guard` as child processes (localcluster.webhook_host, guard_host), both
watching the cluster's policies (the guard with its audit: 6 watches; the webhook: 3). Beside them,
in this process, the baseline: reflectors with the backoff dsguard had before issue 16 (0.5 s
doubling to a 30 s cap, times 0.5-1.5, for every failure, Retry-After unread:
dsguard.reconnect.BACKOFF_ONLY), on
nodes, namespaces, pods, daemonsets and daemonsetpolicies, through the same apiserver in the
same outage.

Each run stops the kube-apiserver (SIGTERM, SIGKILL 2 s later: a terminating apiserver keeps
its watches open and silent), waits out the outage, starts it again with the same arguments and
port (LocalCluster.stop_component/start_component), and measures, per watch:

  recovery  the time its complete list came back (the webhook's and the guard's
            "listed again" log lines; the baseline's on_replace) minus the time the apiserver's
            /readyz first answered 200 (polled every 50 ms from here). Negative: it relisted
            before /readyz was green.

Printed per outage length: median and max over the runs, per watch and for all of a process's
watches together (the slowest of its watches in each run: when it sees everything again).

    .venv/bin/python bench/apiserver_outage.py [--outages 10 45] [--runs 10] [--workdir DIR]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kubernetes_asyncio import client  # noqa: E402

from dsguard import policy as policy_model  # noqa: E402
from dsguard.kube import Obj, Reflector, api_client, list_scoped  # noqa: E402
from dsguard.reconnect import BACKOFF_ONLY  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from localcluster.guard_host import HostGuard  # noqa: E402
from localcluster.nodes import create_nodes, node_manifest  # noqa: E402
from localcluster.webhook_host import HostWebhook  # noqa: E402

NODES = 10
STOP_GRACE = 2.0
LISTED_AGAIN = re.compile(r"^(\S+ \S+) WARNING dsguard\.kube: (\S+): listed again ")
BASELINE = ("nodes", "namespaces", "pods", "daemonsets", "daemonsetpolicies")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the baseline: reflectors with the old backoff, in a thread of their own -------------------------


class Baseline:
    """BACKOFF_ONLY reflectors on an event loop in a thread; the wall-clock times of their lists."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.lists: dict[str, list[float]] = {name: [] for name in BASELINE}
        self.synced = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="baseline", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        if not self.synced.wait(60):
            raise TimeoutError("the baseline reflectors did not sync in 60s")

    def listed_after(self, name: str, since: float) -> float | None:
        later = [t for t in self.lists[name] if t > since]
        return later[0] if later else None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        api = await api_client(str(self.kubeconfig))
        custom = client.CustomObjectsApi(api)

        def policies(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(
                policy_model.GROUP, policy_model.VERSION, policy_model.PLURAL, **kwargs
            )

        def on_replace(name: str) -> Callable[[list[Obj]], None]:
            return lambda items: self.lists[name].append(time.time())

        lists = {name: list_scoped(api, name, None) for name in BASELINE if name != "daemonsetpolicies"}
        lists["daemonsetpolicies"] = policies
        reflectors = [
            Reflector(name, fn, on_replace=on_replace(name), on_event=lambda k, o: None, retry=BACKOFF_ONLY)
            for name, fn in lists.items()
        ]
        tasks = [asyncio.create_task(r.run()) for r in reflectors]
        await asyncio.gather(*(r.synced.wait() for r in reflectors))
        self.synced.set()
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


# --- one outage ---------------------------------------------------------------------------------------


def relists(path: Path, offset: int) -> dict[str, float]:
    """watch -> wall-clock time of its first "listed again" line after byte `offset` of a log."""
    out: dict[str, float] = {}
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            m = LISTED_AGAIN.match(raw.decode(errors="replace"))
            if m and m.group(2) not in out:
                out[m.group(2)] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return out


def ready_time(cluster: LocalCluster, stop: threading.Event, result: list[float]) -> None:
    """Polls /readyz every 50 ms until it answers 200; its wall-clock time into `result`."""
    while not stop.is_set():
        try:
            status, _ = cluster.api_get("/readyz", timeout=1.0)
        except OSError:
            status = 0
        if status == 200:
            result.append(time.time())
            return
        time.sleep(0.05)


@dataclass
class Run:
    outage: float
    recovery: dict[str, float] = field(default_factory=dict)  # "process/watch" -> seconds after /readyz


def one_outage(
    cluster: LocalCluster, webhook: HostWebhook, guard: HostGuard, baseline: Baseline, outage: float
) -> Run:
    offsets = {"webhook": webhook.log_path.stat().st_size, "guard": guard.log_path.stat().st_size}
    stopped = time.time()
    cluster.stop_component("kube-apiserver", grace=STOP_GRACE)
    time.sleep(max(0.0, outage - (time.time() - stopped)))  # the outage itself
    ready: list[float] = []
    done = threading.Event()
    poller = threading.Thread(target=ready_time, args=(cluster, done, ready), daemon=True)
    poller.start()
    cluster.start_component("kube-apiserver")
    poller.join(timeout=30)
    done.set()
    back = ready[0]
    run = Run(outage)
    want = {"webhook": 3, "guard": 6}
    deadline = time.monotonic() + 120  # the baseline may take up to 45 s after the return
    while time.monotonic() < deadline:
        found = {
            "webhook": relists(webhook.log_path, offsets["webhook"]),
            "guard": relists(guard.log_path, offsets["guard"]),
        }
        base = {n: t for n in BASELINE if (t := baseline.listed_after(n, stopped)) is not None}
        if all(len(found[p]) >= n for p, n in want.items()) and len(base) == len(BASELINE):
            for process, watches in found.items():
                for watch, at in watches.items():
                    run.recovery[f"{process}/{watch}"] = at - back
            for watch, at in base.items():
                run.recovery[f"old backoff/{watch}"] = at - back
            return run
        time.sleep(0.5)
    raise TimeoutError(f"not every watch listed again within 120s of the apiserver's return: {found} {base}")


# --- reporting --------------------------------------------------------------------------------------


def summary(runs: list[Run]) -> list[tuple[str, float, float]]:
    """(row, median, max) per watch, and per process for its slowest watch of each run."""
    rows: list[tuple[str, float, float]] = []
    keys = sorted({k for r in runs for k in r.recovery})
    for process in ("webhook", "guard", "old backoff"):
        slowest = [max(v for k, v in r.recovery.items() if k.startswith(process + "/")) for r in runs]
        rows.append((f"{process}: all its watches", statistics.median(slowest), max(slowest)))
        for key in (k for k in keys if k.startswith(process + "/")):
            values = [r.recovery[key] for r in runs]
            rows.append((f"  {key}", statistics.median(values), max(values)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outages", type=float, nargs="+", default=[10.0, 45.0], help="seconds (default 10 45)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path, help="write the runs here")
    args = ap.parse_args()
    logging.getLogger("dsguard.kube").setLevel(logging.ERROR)  # the baseline's retries: not news
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dsguard-bench-outage-"))
    log(f"cluster in {workdir}")
    with LocalCluster(workdir / "cluster") as cluster:
        create_nodes(cluster.kubectl, [node_manifest(f"n{i}") for i in range(NODES)])
        webhook = HostWebhook(cluster).start()  # applies the CRD
        policy = {
            "apiVersion": "dsguard.io/v1alpha1",
            "kind": "DaemonSetPolicy",
            "metadata": {"name": "bench"},
            "spec": {"match": {"namespaces": ["bench"]}, "rollout": {"maxUnavailable": 1}},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
        guard = HostGuard(cluster, tick=1.0).start()
        baseline = Baseline(cluster.kubeconfig)
        baseline.start()
        runs: list[Run] = []
        try:
            for outage in args.outages:
                for i in range(args.runs):
                    run = one_outage(cluster, webhook, guard, baseline, outage)
                    runs.append(run)
                    worst = {
                        p: max(v for k, v in run.recovery.items() if k.startswith(p))
                        for p in ("webhook", "guard", "old")
                    }
                    slowest = ", ".join(f"{p} {v:+.2f}s" for p, v in worst.items())
                    log(f"outage {outage:g}s run {i + 1}/{args.runs}: after /readyz, slowest watch {slowest}")
        finally:
            baseline.stop()
            guard.stop()
            webhook.stop()
    print(f"\nTime from the kube-apiserver's /readyz turning green to each watch listed again (s), "
          f"{args.runs} runs per outage; the apiserver stopped with SIGTERM, SIGKILL after "
          f"{STOP_GRACE:g}s\n")  # fmt: skip
    for outage in args.outages:
        mine = [r for r in runs if r.outage == outage]
        print(f"outage {outage:g} s")
        print(f"  {'watch':<44} {'median':>8} {'max':>8}")
        for row, med, mx in summary(mine):
            print(f"  {row:<44} {med:>8.2f} {mx:>8.2f}")
        print()
    if args.json:
        args.json.write_text(
            json.dumps([{"outage": r.outage, "recovery": r.recovery} for r in runs], indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
