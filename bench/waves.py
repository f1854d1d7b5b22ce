"""Wave rollouts at scale: what pacing costs and what it buys, on the real control plane.

A local control plane with --nodes kwok nodes in --zones zones (topology.kubernetes.io/zone),
one DaemonSet `agent` on all of them (RollingUpdate, maxUnavailable --max-unavailable), the
mutating webhook and the guard as child processes (host-run, as the tests run them). Measured,
in this order, each in the same run:

  plain      the DaemonSet controller's own RollingUpdate of a new template (no waves policy):
             time from the apply to every pod updated and available, and the apiserver requests
             in that time (its own apiserver_request_total).
  waves      the same change under a waves policy (canary --canary nodes, then one wave per
             zone, bakeSeconds 0, the same maxUnavailable): time to dsguard.io/waves-completed,
             apiserver requests, the guard's CPU seconds and peak RSS during it.
  bad in wave i, for each wave: a crash-looping template that fails only on wave i's nodes
             (kwok's dsguard.test/behavior-nodes); failureThreshold 1, action Pause. Reported:
             the nodes on the bad revision at the pause, against the waves started so far. Then
             the good template goes back on (a wave rollout of its own).

    .venv/bin/python bench/waves.py [--nodes 1000] [--zones 5] [--max-unavailable 50] [--canary 10]
        [--workdir DIR] [--keep-cluster] [--json FILE]

Not a test: it prints figures (docs/waves.md, Performance, has the ones measured).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.guard_reaction import CRASHLOOP, MIB, bench_cluster, log  # noqa: E402
from dsguard.policy import parse_policy  # noqa: E402
from dsguard.waves import PlanNode, plan_waves  # noqa: E402
from guard.gates import total_requests  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from localcluster.guard_host import HostGuard  # noqa: E402
from localcluster.nodes import (  # noqa: E402
    POD_BEHAVIOR_ANNOTATION,
    POD_BEHAVIOR_NODES_ANNOTATION,
    POD_TIMING_ANNOTATIONS,
    create_nodes,
    node_manifest,
)
from localcluster.procs import process_stats, wait_ready  # noqa: E402
from localcluster.webhook_host import HostWebhook  # noqa: E402

NAMESPACE = "bench-waves"
NODE_LABEL = "dsguard.bench/pool"
ZONE = "topology.kubernetes.io/zone"
REVISION_LABEL = "controller-revision-hash"
Obj = dict[str, Any]


def daemonset(image: str, max_unavailable: int, annotations: Mapping[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "minReadySeconds": 2,  # a crash-looping pod (Ready 0.5s) is never available
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}},
            "template": {
                "metadata": {"labels": {"app": "agent"}, "annotations": dict(annotations or {})},
                "spec": {
                    "nodeSelector": {NODE_LABEL: "bench"},
                    "containers": [{"name": "agent", "image": image}],
                },
            },
        },
    }


def policy_doc(waves: Mapping[str, Any] | None) -> Obj:
    guard: Obj = {"failureThreshold": 1, "action": "Pause"}
    if waves is not None:
        guard["waves"] = dict(waves)
    return {
        "apiVersion": "dsguard.io/v1alpha1",
        "kind": "DaemonSetPolicy",
        "metadata": {"name": "bench-waves"},
        "spec": {"match": {"namespaces": [NAMESPACE]}, "guard": guard},
    }


class Bench:
    def __init__(self, cluster: LocalCluster, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.args = args

    def apply(self, obj: Obj) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), timeout=300)

    def ds(self) -> Obj:
        return dict(self.cluster.kubectl_json("get", "daemonset", "agent", "-n", NAMESPACE))

    def requests(self) -> float:
        status, body = self.cluster.api_get("/metrics", timeout=30)
        assert status == 200, status
        return total_requests(body.decode())

    def pods(self) -> list[Obj]:
        return list(self.cluster.kubectl_json("get", "pods", "-n", NAMESPACE, "-l", "app=agent")["items"])

    def until(self, what: str, check: Callable[[], bool], timeout: float = 1800) -> float:
        wait_ready(check, what=what, timeout=timeout, interval=0.5)
        return time.monotonic()

    def rolled_out(self, image: str) -> bool:
        ds = self.ds()
        st = ds.get("status", {})
        n = self.args.nodes
        return bool(
            st.get("observedGeneration") == ds["metadata"]["generation"]
            and st.get("updatedNumberScheduled")
            == st.get("numberAvailable")
            == st.get("desiredNumberScheduled")
            == n
            and ds["spec"]["template"]["spec"]["containers"][0]["image"] == image
        )

    def rolled_back_to(self, image: str) -> bool:
        return self.annotation("dsguard.io/waves-completed") is not None and self.rolled_out(image)

    def annotation(self, key: str) -> str | None:
        value = (self.ds()["metadata"].get("annotations") or {}).get(key)
        return None if value is None else str(value)


@dataclass
class Rollout:
    mode: str
    seconds: float
    requests: float
    guard_cpu_seconds: float = 0.0
    guard_peak_rss_mib: float = 0.0


@dataclass
class Injected:
    wave: int
    wave_name: str
    started_nodes: int  # nodes of the waves started up to and including this one
    bad_at_pause: int
    seconds_to_pause: float


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--zones", type=int, default=5)
    p.add_argument("--max-unavailable", type=int, default=50)
    p.add_argument("--canary", type=int, default=10)
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep-cluster", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--flapping",
        action="store_true",
        help="instead: an agent Ready for 3s then crashing, plain RollingUpdate with minReadySeconds "
        "0 and 10, and waves: nodes on the bad revision when the guard paused (failureThreshold 1)",
    )
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dsguard-bench-waves-")).resolve()
    cluster = bench_cluster(workdir)
    cluster.start()
    log(f"cluster up at {cluster.server}")
    try:
        return flapping(cluster, args, workdir) if args.flapping else run(cluster, args, workdir)
    finally:
        if args.keep_cluster:
            log(f"cluster kept: {sys.executable} -m localcluster down --workdir {cluster.workdir}")
        else:
            cluster.stop()


def fleet(
    cluster: LocalCluster, args: argparse.Namespace
) -> tuple[Bench, list[str], dict[str, dict[str, str]]]:
    """The namespace and --nodes kwok nodes spread over --zones zones: (bench, names, labels)."""
    b = Bench(cluster, args)
    cluster.kubectl("create", "namespace", NAMESPACE)
    zones = [f"zone-{z}" for z in range(args.zones)]
    names = [f"bench-{i:05d}" for i in range(args.nodes)]
    labels = {n: {NODE_LABEL: "bench", ZONE: zones[i % len(zones)]} for i, n in enumerate(names)}
    create_nodes(cluster.kubectl, [node_manifest(n, labels=labels[n]) for n in names])
    wait_ready(
        lambda: (
            cluster.kubectl("get", "serviceaccount", "default", "-n", NAMESPACE, check=False).returncode == 0
        ),
        what="the namespace's default ServiceAccount",
        timeout=60,
    )
    return b, names, labels


def run(cluster: LocalCluster, args: argparse.Namespace, workdir: Path) -> int:
    b, names, labels = fleet(cluster, args)
    mu = args.max_unavailable
    b.apply(daemonset("agent:1", mu))
    b.until("the first rollout", lambda: b.rolled_out("agent:1"))
    log(f"{args.nodes} nodes, DaemonSet rolled out")

    waves = {"canary": {"nodes": args.canary}, "groupBy": ZONE, "maxUnavailable": mu, "bakeSeconds": 0}
    plain_policy = workdir / "plain.yaml"
    plain_policy.write_text(yaml.safe_dump(policy_doc(None)))
    waves_policy = workdir / "waves.yaml"
    waves_policy.write_text(yaml.safe_dump(policy_doc(waves)))
    parsed = parse_policy(policy_doc(waves))
    assert parsed.guard is not None and parsed.guard.waves is not None
    plan = plan_waves(parsed.guard.waves, [PlanNode(n, labels[n]) for n in names])

    results: list[Rollout] = []
    # plain RollingUpdate, the guard watching (no waves)
    with HostGuard(cluster, policy_files=[plain_policy]) as guard:
        start, before = time.monotonic(), b.requests()
        b.apply(daemonset("agent:2", mu))
        end = b.until("the plain rollout", lambda: b.rolled_out("agent:2"))
        results.append(Rollout("plain RollingUpdate", end - start, b.requests() - before))
        log(f"plain: {results[-1]}")
    only = {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    injected: list[Injected] = []
    with (
        HostWebhook(cluster, namespace_selector=only, policy_files=[waves_policy]),
        HostGuard(cluster, policy_files=[waves_policy]) as guard,
    ):
        cpu0 = process_stats(guard.pid).cpu_seconds
        start, before = time.monotonic(), b.requests()
        b.apply(daemonset("agent:3", mu))
        end = b.until("the wave rollout", lambda: b.annotation("dsguard.io/waves-completed") is not None)
        st = process_stats(guard.pid)
        results.append(
            Rollout(
                f"waves (canary {args.canary}, {len(plan) - 1} zones, bake 0)",
                end - start,
                b.requests() - before,
                st.cpu_seconds - cpu0,
                st.hwm_bytes / MIB,
            )
        )
        log(f"waves: {results[-1]}")
        image = 3
        for i, wave in enumerate(plan):
            image += 1
            bad = daemonset(
                f"agent:{image}-bad", mu, {**CRASHLOOP, POD_BEHAVIOR_NODES_ANNOTATION: ",".join(wave.nodes)}
            )
            start = time.monotonic()
            b.apply(bad)
            end = b.until(f"the pause in wave {i + 1}", lambda: b.annotation("dsguard.io/paused") == "true")
            revision = b.annotation("dsguard.io/paused-revision")
            on_bad = sum(
                1
                for p in b.pods()
                if p["metadata"]["labels"].get(REVISION_LABEL) == revision
                and not p["metadata"].get("deletionTimestamp")
            )
            started = sum(len(w.nodes) for w in plan[: i + 1])
            injected.append(Injected(i + 1, wave.name, started, on_bad, end - start))
            log(f"bad in wave {i + 1}: {injected[-1]}")
            image += 1
            b.apply(daemonset(f"agent:{image}", mu))  # the guard resumes; a wave rollout of its own
            good = f"agent:{image}"
            b.until("the good template back", functools.partial(b.rolled_back_to, good))

    print(f"\n{args.nodes} kwok nodes, {args.zones} zones, maxUnavailable {mu}, canary {args.canary}")
    print(
        f"{'rollout':42} {'seconds':>8} {'apiserver requests':>19} {'guard CPU s':>12} {'guard peak MiB':>15}"
    )
    for r in results:
        cost = f"{r.guard_cpu_seconds:12.2f} {r.guard_peak_rss_mib:15.0f}"
        print(f"{r.mode:42} {r.seconds:8.1f} {r.requests:19.0f} {cost}")
    ratio = results[1].seconds / results[0].seconds
    print(
        f"waves / plain: {ratio:.2f}x the time, {results[1].requests / results[0].requests:.2f}x the requests"
    )
    head = f"{'waves started (nodes)':>22} {'on bad at pause':>16} {'s to pause':>11}"
    print(f"\n{'bad revision fails in':32} {head}")
    for x in injected:
        label = f"wave {x.wave} ({x.wave_name})"
        print(f"{label:32} {x.started_nodes:22} {x.bad_at_pause:16} {x.seconds_to_pause:11.1f}")
    worst = max(
        (x.bad_at_pause - (x.started_nodes - len(plan[x.wave - 1].nodes)) for x in injected), default=0
    )
    print(f"worst: {worst} node(s) of the failing wave on the bad revision (maxUnavailable {mu})")
    print(f"median time to pause: {statistics.median(x.seconds_to_pause for x in injected):.1f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"rollouts": [asdict(r) for r in results], "injected": [asdict(x) for x in injected]},
                indent=2,
            )
        )
    return 0


def flapping(cluster: LocalCluster, args: argparse.Namespace, workdir: Path) -> int:
    """The case pacing is for: Ready for 3s, then crash-looping. Nodes on the bad revision at the
    guard's pause, with the DaemonSet controller pacing (minReadySeconds 0, 10) and with waves."""
    b, _, _ = fleet(cluster, args)
    mu = args.max_unavailable
    flaps = {
        POD_BEHAVIOR_ANNOTATION: "ready-then-crash",
        POD_TIMING_ANNOTATIONS["start_delay"]: "1s",
        POD_TIMING_ANNOTATIONS["crash_after"]: "3s",
        POD_TIMING_ANNOTATIONS["backoff"]: "3s",
    }
    waves = {"canary": {"nodes": args.canary}, "groupBy": ZONE, "maxUnavailable": mu, "bakeSeconds": 10}
    rows: list[tuple[str, int, float]] = []
    cases = (
        ("RollingUpdate, minReadySeconds 0", 0, False),
        ("RollingUpdate, minReadySeconds 10", 10, False),
        (f"waves (canary {args.canary}, bake 10s), minReadySeconds 0", 0, True),
    )
    for image, (label, min_ready, with_waves) in enumerate(cases, 1):
        good = daemonset(f"agent:{image}", mu)
        good["spec"]["minReadySeconds"] = min_ready
        b.apply(good)
        b.until("the good template", functools.partial(b.rolled_out, f"agent:{image}"))
        path = workdir / f"flap-{image}.yaml"
        path.write_text(yaml.safe_dump(policy_doc(waves if with_waves else None)))
        only = {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
        with (
            HostWebhook(cluster, namespace_selector=only, policy_files=[path]),
            HostGuard(cluster, policy_files=[path]),
        ):
            bad = daemonset(f"agent:{image}-flaps", mu, flaps)
            bad["spec"]["minReadySeconds"] = min_ready
            start = time.monotonic()
            b.apply(bad)
            end = b.until("the pause", lambda: b.annotation("dsguard.io/paused") == "true")
            revision = b.annotation("dsguard.io/paused-revision")
            on_bad = sum(
                1
                for p in b.pods()
                if p["metadata"]["labels"].get(REVISION_LABEL) == revision
                and not p["metadata"].get("deletionTimestamp")
            )
            rows.append((label, on_bad, end - start))
            log(f"{label}: {on_bad} nodes on the bad revision at the pause, {end - start:.1f}s")
            cluster.kubectl("annotate", "daemonset", "agent", "-n", NAMESPACE, "dsguard.io/paused-")
    print(f"\n{args.nodes} nodes, maxUnavailable {mu}; the agent is Ready for 3s, then crash-loops")
    print(f"{'pacing':44} {'nodes on bad at pause':>22} {'s to pause':>11}")
    for label, on_bad, seconds in rows:
        print(f"{label:44} {on_bad:22} {seconds:11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
