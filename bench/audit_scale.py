"""Cost of the guard's background audit (guard.policy_audit.audit) on a large cluster, in-process.

No cluster, no API: --nodes Node objects (a few tainted pools: control plane, infra, GPU; kubelets
mid-upgrade across three versions) go through NodeInfo.from_node into a ClusterFacts snapshot, as
the ClusterCache builds it; --daemonsets DaemonSets (node agents, GPU and infra agents, exporters,
some non-compliant) and --policies DaemonSetPolicies (tolerations with coverage, kubelet version
rules, rollout caps) are built to look like a real cluster's.

For each node count, over --runs runs:

  audit cold      audit() on a new facts snapshot (same content, new object): what an audit pays
                  after a node or namespace change; node placements are walked again.
  audit warm      audit() on the snapshot of the previous run: a DaemonSet or policy change, or a
                  resync, with nothing the rules read about nodes changed.
  admission       the same DaemonSets judged one by one through dsguard.rules.engine.judge
                  (as /validate judges a CREATE), cold and warm in the same way:
                  what admitting every one of them again would cost. audit/admission is the ratio.

Both share the process-wide placement memo (dsguard.rules.context.PLACEMENTS), as they would in
one process. Reported: p50/p99 (nearest rank; with few runs p99 is the largest), per-DaemonSet
cost at p50, the snapshot build, the violations found, and the process's peak RSS
(getrusage ru_maxrss: the high-water mark so far, so it only grows across node counts).

    .venv/bin/python bench/audit_scale.py [--nodes 1000 5000] [--daemonsets 50] [--policies 3]
        [--runs 5] [--unique-placements] [--json]

--incremental: one node change at a time (a label no rule reads, a kubelet upgrade, a NoSchedule
taint, a join, a leave; each applied and reverted in turn) through guard.policy_audit.
IncrementalAudit, which patches its node walks for the changed node; --baseline also runs, first
and in the same process, IncrementalAudit(patch_walks=False), which walks every node again for
each DaemonSet judged again (the path before), over at most 4 changes of each kind, and prints
the ratio of the p50s.

    .venv/bin/python bench/audit_scale.py --incremental [--baseline] [--runs 20] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dsguard.facts import ClusterFacts  # noqa: E402
from dsguard.policy import Policy, parse_policy  # noqa: E402
from dsguard.rules import engine  # noqa: E402
from dsguard.rules.context import PLACEMENTS, placement_key  # noqa: E402
from dsguard.scheduling import NodeInfo, Taint  # noqa: E402
from guard.policy_audit import IncrementalAudit, audit  # noqa: E402

SERVER_VERSION = "v1.33.4"
KUBELETS = ("v1.33.4", "v1.33.4", "v1.32.8", "v1.31.12")  # mid-upgrade: half the nodes still behind
NAMESPACES = ("logging", "monitoring", "kube-system", "gpu-operator", "security", "networking")
AGENT = "registry.example.com/observability/node-agent"
FLUENT_BIT = "cr.fluentbit.io/fluent/fluent-bit"
DCGM = "nvcr.io/nvidia/k8s/dcgm-exporter"
MIB = 1024 * 1024

CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
INFRA_TAINT = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
TOLERATE_ALL = [{"operator": "Exists"}]
TOLERATE_CP_INFRA = [
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
]
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# --- the cluster --------------------------------------------------------------------------------------


def make_nodes(count: int) -> list[dict[str, Any]]:
    """3 control-plane nodes, 5% infra, 3% GPU (at least a few of each), the rest workers."""
    infra = max(5, count * 5 // 100)
    gpu = max(4, count * 3 // 100)
    zones = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
    out = []
    for i in range(count):
        role, taints, extra = "worker", [], {}
        if i < 3:
            role, taints = "control-plane", [CONTROL_PLANE_TAINT]
        elif i < 3 + infra:
            role, taints = "infra", [INFRA_TAINT]
        elif i < 3 + infra + gpu:
            role, taints, extra = "gpu", [GPU_TAINT], {"accelerator": "nvidia"}
        name = f"ip-10-{i // 62500}-{i // 250 % 250}-{i % 250 + 4}.eu-west-1.compute.internal"
        labels = {
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": zones[i % 3],
            f"node-role.kubernetes.io/{role}": "",
            **extra,
        }
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": [dict(t) for t in taints]},
                "status": {
                    "nodeInfo": {"kubeletVersion": KUBELETS[i % len(KUBELETS)]},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    return out


def namespace_labels() -> dict[str, dict[str, str]]:
    tiers = {"logging": "platform", "monitoring": "platform", "kube-system": "system"}
    return {ns: {"kubernetes.io/metadata.name": ns, "tier": tiers.get(ns, "workload")} for ns in NAMESPACES}


# (namespace, image, tolerations, nodeSelector, maxUnavailable): one kind of DaemonSet each; a
# cluster has a few of each, which is why placements are shared between DaemonSets.
KINDS: list[tuple[str, str, list[dict[str, Any]], dict[str, str], int | str]] = [
    ("logging", f"{FLUENT_BIT}:3.2.4", TOLERATE_CP_INFRA, {"kubernetes.io/os": "linux"}, "10%"),
    ("logging", f"{FLUENT_BIT}:2.0.9", TOLERATE_CP_INFRA, {}, 1),  # too old for kubelet 1.33
    ("logging", f"{FLUENT_BIT}:3.2.4", [], {}, 1),  # misses the required tolerations
    ("monitoring", f"{AGENT}:7.52.0", TOLERATE_ALL, {}, "10%"),
    ("monitoring", f"{AGENT}:7.40.1", TOLERATE_ALL, {}, 5),  # too old, and a wide rollout
    ("monitoring", f"{AGENT}:latest", TOLERATE_CP_INFRA, {"kubernetes.io/os": "linux"}, 1),  # untagged
    ("kube-system", "registry.k8s.io/kube-proxy:v1.33.4", TOLERATE_ALL, {}, "10%"),
    ("kube-system", "docker.io/calico/node:v3.29.1", TOLERATE_ALL, {}, 1),
    ("gpu-operator", f"{DCGM}:3.3.9-3.6.1-ubuntu22.04", TOLERATE_GPU, {"accelerator": "nvidia"}, "20%"),
    ("gpu-operator", f"{DCGM}:3.1.8-3.1.5-ubuntu20.04", [], {"accelerator": "nvidia"}, 1),
    ("security", "registry.example.com/security/falco:0.39.2", TOLERATE_ALL, {}, "25%"),
    ("networking", "registry.example.com/net/cilium-agent:1.16.5", TOLERATE_ALL, {}, 2),
]


def make_daemonsets(
    count: int, *, unique_placements: bool = False, placements: int = 0
) -> list[dict[str, Any]]:
    """unique_placements: each DaemonSet also tolerates a taint of its own, which no node has, so
    placements are alike but no two DaemonSets share a placement memo entry (the worst case).
    placements > 0: the same, with `placements` distinct placements shared round-robin."""
    out = []
    for i in range(count):
        # With `placements`, DaemonSets i and i + placements are of one kind and share a placement.
        kind = (i % placements if placements else i) % len(KINDS)
        namespace, image, tolerations, selector, max_unavailable = KINDS[kind]
        name = f"{image.rsplit('/', 1)[-1].split(':')[0]}-{i:04d}"
        pod_spec: dict[str, Any] = {
            "containers": [
                {"name": "main", "image": image, "resources": {"requests": {"cpu": "100m"}}},
                {"name": "reloader", "image": "registry.example.com/tools/config-reloader:0.14.0"},
            ],
            "tolerations": [dict(t) for t in tolerations]
            + ([{"key": f"dsguard.bench/{name}", "operator": "Exists"}] if unique_placements else [])
            + ([{"key": f"dsguard.bench/p{i % placements}", "operator": "Exists"}] if placements else []),
            "serviceAccountName": name,
        }
        if selector:
            pod_spec["nodeSelector"] = dict(selector)
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "node-agent"}
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {
                    "name": name, "namespace": namespace, "uid": f"uid-{i:08x}", "labels": labels,
                },
                "spec": {
                    "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                    "updateStrategy": {
                        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable},
                    },
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                },
            }
        )  # fmt: skip
    return out


POLICY_SPECS: list[dict[str, Any]] = [
    {  # node agents on every node, control plane and infra included
        "match": {"namespaces": ["logging", "monitoring"]},
        "enforcement": "Enforce",
        "tolerations": {
            "required": TOLERATE_CP_INFRA,
            "onMissing": "Add",
            "coverage": {"nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}}},
        },
        "rollout": {"maxUnavailable": "10%", "onExceed": "Clamp"},
    },
    {  # agents compatible with the kubelets they run next to
        "match": {"namespaceSelector": {"matchLabels": {"tier": "platform"}}},
        "enforcement": "Warn",
        "versions": {
            "rules": [
                {
                    "image": FLUENT_BIT,
                    "compatibility": [
                        {"kubernetes": ">=1.33.0", "versions": ">=3.0.0"},
                        {"kubernetes": "<1.33.0", "versions": ">=2.1.0,<4.0.0"},
                    ],
                },
                {
                    "image": AGENT,
                    "compatibility": [
                        {"kubernetes": ">=1.33.0", "versions": ">=7.50.0"},
                        {"kubernetes": ">=1.31.0,<1.33.0", "versions": ">=7.44.0,<8.0.0"},
                    ],
                },
            ],
            "unknownVersion": "Warn",
        },
    },
    {  # GPU monitoring on every GPU node, gently
        "match": {"namespaces": ["gpu-operator"]},
        "enforcement": "Audit",
        "tolerations": {
            "required": TOLERATE_GPU,
            "coverage": {"nodeSelector": {"matchLabels": {"accelerator": "nvidia"}}},
        },
        "rollout": {"maxUnavailable": "20%"},
        "versions": {
            "rules": [{"image": DCGM, "compatibility": [{"kubernetes": ">=1.30.0", "versions": ">=3.3.0"}]}],
            "unknownVersion": "Deny",
        },
    },
]


def make_policies(count: int) -> list[Policy]:
    """The three above, then more of the same shapes over other namespace sets."""
    out = []
    for i in range(count):
        spec = json.loads(json.dumps(POLICY_SPECS[i % len(POLICY_SPECS)]))
        if i >= len(POLICY_SPECS):
            spec["match"] = {"namespaces": list(NAMESPACES[i % len(NAMESPACES) :][:2] or NAMESPACES[:2])}
        out.append(parse_policy({"metadata": {"name": f"policy-{i}"}, "spec": spec}, source=f"bench/{i}"))
    return out


def snapshot(nodes: Sequence[NodeInfo]) -> ClusterFacts:
    """What ClusterCache.facts builds: a new object each time, nodes sorted by name."""
    return ClusterFacts(
        nodes=tuple(sorted(nodes, key=lambda n: n.name)),
        namespaces=namespace_labels(),
        server_version=SERVER_VERSION,
    )


# --- measuring ----------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with few runs p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@dataclass
class SizeReport:
    nodes: int
    daemonsets: int
    policies: int
    runs: int
    snapshot_ms: float
    audit_cold_ms: list[float]
    audit_warm_ms: list[float]
    admission_cold_ms: list[float]
    admission_warm_ms: list[float]
    governed: int  # (DaemonSet, policy) pairs
    violations: int  # (DaemonSet, policy, rule, message)
    violating: int  # distinct (DaemonSet, policy) pairs with a violation
    peak_rss_mib: float

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nodes": self.nodes, "daemonsets": self.daemonsets, "policies": self.policies,
            "runs": self.runs, "snapshot_ms": round(self.snapshot_ms, 2),
        }  # fmt: skip
        for key in ("audit_cold", "audit_warm", "admission_cold", "admission_warm"):
            values: list[float] = getattr(self, f"{key}_ms")
            out[f"{key}_p50_ms"] = round(pct(values, 50), 2)
            out[f"{key}_p99_ms"] = round(pct(values, 99), 2)
        out["audit_cold_per_ds_ms"] = round(pct(self.audit_cold_ms, 50) / self.daemonsets, 3)
        out["audit_warm_per_ds_ms"] = round(pct(self.audit_warm_ms, 50) / self.daemonsets, 3)
        out["ratio_cold"] = round(pct(self.audit_cold_ms, 50) / pct(self.admission_cold_ms, 50), 2)
        out["ratio_warm"] = round(pct(self.audit_warm_ms, 50) / pct(self.admission_warm_ms, 50), 2)
        out.update(governed=self.governed, violations=self.violations, violating=self.violating)
        out["peak_rss_mib"] = round(self.peak_rss_mib, 1)
        return out


def bench_size(
    nodes: int,
    daemonsets: int,
    policies: int,
    runs: int,
    *,
    unique_placements: bool = False,
    placements: int = 0,
) -> SizeReport:
    node_infos = [NodeInfo.from_node(n) for n in make_nodes(nodes)]
    objs = make_daemonsets(daemonsets, unique_placements=unique_placements, placements=placements)
    pols = make_policies(policies)
    snapshot_ms = min(timed(lambda: snapshot(node_infos)) for _ in range(3)) * 1000

    def admit_all(facts: ClusterFacts) -> None:
        for obj in objs:
            engine.judge(pols, obj, facts=facts)

    audit_cold: list[float] = []
    audit_warm: list[float] = []
    admission_cold: list[float] = []
    admission_warm: list[float] = []
    gc.collect()
    for _ in range(runs):
        judge = functools.partial(audit, pols, objs, snapshot(node_infos))
        audit_cold.append(timed(judge) * 1000)
        audit_warm.append(timed(judge) * 1000)
        admit = functools.partial(admit_all, snapshot(node_infos))
        admission_cold.append(timed(admit) * 1000)
        admission_warm.append(timed(admit) * 1000)
    results = audit(pols, objs, snapshot(node_infos))
    return SizeReport(
        nodes=nodes,
        daemonsets=daemonsets,
        policies=policies,
        runs=runs,
        snapshot_ms=snapshot_ms,
        audit_cold_ms=audit_cold,
        audit_warm_ms=audit_warm,
        admission_cold_ms=admission_cold,
        admission_warm_ms=admission_warm,
        governed=sum(len(r.matched) for r in results.values()),
        violations=sum(len(r.violations) for r in results.values()),
        violating=sum(len(r.violating) for r in results.values()),
        peak_rss_mib=peak_rss_bytes() / MIB,
    )


# --- --incremental: one change at a time, re-judged by guard.policy_audit.IncrementalAudit ------------


def _relabel(node: NodeInfo, **labels: str) -> NodeInfo:
    return dataclasses.replace(node, labels={**node.labels, **labels})


def node_changes(nodes: list[NodeInfo]) -> dict[str, Callable[[list[NodeInfo]], list[NodeInfo]]]:
    """One node change each, on a worker in the middle of the list (and back, alternately)."""
    w = len(nodes) // 2
    worker = nodes[w]
    upgraded = "v1.33.4" if worker.kubelet_version != "v1.33.4" else "v1.32.8"
    joined = dataclasses.replace(_relabel(worker, **{"kubernetes.io/hostname": "joined"}), name="zz-joined")
    taint = Taint("example.com/maintenance", "", "NoSchedule")

    def swap(node: NodeInfo) -> Callable[[list[NodeInfo]], list[NodeInfo]]:
        def apply(current: list[NodeInfo]) -> list[NodeInfo]:
            out = list(current)
            out[w] = node if current[w] is not node else worker
            return out

        return apply

    def join(current: list[NodeInfo]) -> list[NodeInfo]:
        return current[:-1] if current[-1] is joined else [*current, joined]

    def leave(current: list[NodeInfo]) -> list[NodeInfo]:
        return (
            [*current[:w], *current[w + 1 :]]
            if current[w].name == worker.name  # whatever an odd number of swaps left there
            else [*current[:w], worker, *current[w:]]
        )

    return {
        "a label no rule reads": swap(_relabel(worker, **{"example.com/rack": "r7"})),
        "kubelet upgrade": swap(dataclasses.replace(worker, kubelet_version=upgraded)),
        "NoSchedule taint added": swap(dataclasses.replace(worker, taints=(*worker.taints, taint))),
        "node joins": join,
        "node leaves": leave,
    }


@dataclass
class IncrementalReport:
    nodes: int
    daemonsets: int
    policies: int
    placements: int  # distinct placements among the DaemonSets
    runs: int
    patch_walks: bool  # False: the baseline, every judged DaemonSet's nodes walked again
    full_cold_ms: float
    changes: dict[str, dict[str, float]]  # what changed -> p50_ms, max_ms, rejudged
    peak_rss_mib: float


def bench_incremental(
    nodes: int, daemonsets: int, policies: int, placements: int, runs: int, *, patch_walks: bool = True
) -> IncrementalReport:
    node_infos = sorted((NodeInfo.from_node(n) for n in make_nodes(nodes)), key=lambda n: n.name)
    objs = make_daemonsets(daemonsets, placements=placements)
    by_key = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}
    pols = make_policies(policies)
    distinct = len({placement_key(o["spec"]["template"]["spec"]) for o in objs})
    PLACEMENTS.clear()
    gc.collect()
    incremental = IncrementalAudit(patch_walks=patch_walks)
    current = node_infos
    full_cold = timed(lambda: incremental.run(pols, by_key, snapshot(current))) * 1000
    changes: dict[str, dict[str, float]] = {}
    for what, change in node_changes(node_infos).items():
        samples: list[float] = []
        rejudged: list[int] = []
        for _ in range(runs):
            current = change(current)
            facts = snapshot(current)
            samples.append(timed(lambda facts=facts: incremental.run(pols, by_key, facts)) * 1000)  # type: ignore[misc]
            rejudged.append(incremental.rejudged)
        facts = snapshot(current)
        if incremental.run(pols, by_key, facts) != audit(pols, objs, facts):
            raise AssertionError(f"{what}: the incremental audit differs from the full audit")
        changes[what] = {"p50_ms": pct(samples, 50), "max_ms": max(samples), "rejudged": max(rejudged)}
    return IncrementalReport(
        nodes=nodes, daemonsets=daemonsets, policies=policies, placements=distinct, runs=runs,
        patch_walks=patch_walks, full_cold_ms=full_cold, changes=changes, peak_rss_mib=peak_rss_bytes() / MIB,
    )  # fmt: skip


def print_incremental(r: IncrementalReport, baseline: IncrementalReport | None = None) -> None:
    how = "walks patched per changed node" if r.patch_walks else "baseline: nodes walked again"
    print(
        f"incremental audit ({how}): {r.nodes} nodes, {r.daemonsets} DaemonSets "
        f"({r.placements} distinct placements), "
        f"{r.policies} policies; first (full) audit {r.full_cold_ms:.0f} ms; {r.runs} changes of each kind "
        "(applied and reverted in turn), each re-judged and checked equal to a full audit"
    )
    for what, c in r.changes.items():
        print(
            f"  {what:<24} p50 {c['p50_ms']:7.1f} ms  max {c['max_ms']:7.1f} ms  "
            f"DaemonSets re-judged {c['rejudged']:.0f}"
            + (
                f"  baseline p50 {baseline.changes[what]['p50_ms']:7.1f} ms "
                f"({baseline.changes[what]['p50_ms'] / max(c['p50_ms'], 1e-9):.1f}x)"
                if baseline is not None
                else ""
            )
        )
    print(f"  peak RSS {r.peak_rss_mib:.0f} MiB")


def print_report(s: Mapping[str, Any]) -> None:
    print(
        f"{s['nodes']} nodes, {s['daemonsets']} DaemonSets, {s['policies']} policies, {s['runs']} runs "
        f"({s['governed']} governed (DaemonSet, policy) pairs, {s['violating']} violating, "
        f"{s['violations']} violations); snapshot build {s['snapshot_ms']:.1f} ms"
    )
    for what, label in (("audit", "audit    "), ("admission", "admission")):
        print(
            f"  {label} cold p50 {s[f'{what}_cold_p50_ms']:8.1f} ms  p99 {s[f'{what}_cold_p99_ms']:8.1f} ms"
            f"   warm p50 {s[f'{what}_warm_p50_ms']:8.1f} ms  p99 {s[f'{what}_warm_p99_ms']:8.1f} ms"
        )
    print(
        f"  audit per DaemonSet (p50): cold {s['audit_cold_per_ds_ms']:.3f} ms, warm "
        f"{s['audit_warm_per_ds_ms']:.3f} ms; audit/admission (p50): cold {s['ratio_cold']:.2f}x, "
        f"warm {s['ratio_warm']:.2f}x; peak RSS {s['peak_rss_mib']:.0f} MiB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--daemonsets", type=int, default=50)
    p.add_argument("--policies", type=int, default=3)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--unique-placements", action="store_true", help="no two DaemonSets share a placement (worst case)"
    )
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.add_argument(
        "--incremental",
        action="store_true",
        help="one node change at a time through IncrementalAudit (defaults: --nodes 5000 --daemonsets 200 "
        "--placements 150)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="with --incremental: also the path that walks every node again, in the same run",
    )
    p.add_argument("--placements", type=int, default=0, help="distinct placements among the DaemonSets")
    p.add_argument("--quick", action="store_true", help="fewer runs and nodes")
    args = p.parse_args(argv)
    if args.runs < 1 or args.daemonsets < 1 or args.policies < 1:
        p.error("--runs, --daemonsets and --policies must be at least 1")
    if args.incremental:
        given = set(argv if argv is not None else sys.argv[1:])
        nodes = args.nodes if "--nodes" in given else [5000]
        count = args.daemonsets if "--daemonsets" in given else 200
        placements = args.placements or 150
        runs = 3 if args.quick else args.runs
        if args.quick and "--nodes" not in given:
            nodes = [2000]
        inc_reports = []
        for n in sorted(nodes):
            base = None
            if args.baseline:
                base = bench_incremental(n, count, args.policies, placements, min(runs, 4), patch_walks=False)
                print_incremental(base)
                inc_reports.append(base)
            patched = bench_incremental(n, count, args.policies, placements, runs)
            print_incremental(patched, base)
            inc_reports.append(patched)
        if args.json:
            print(json.dumps([asdict(r) for r in inc_reports]))
        return 0
    if args.quick:
        args.runs, args.nodes = 2, [1000]
    reports = []
    for n in sorted(args.nodes):
        report = bench_size(
            n, args.daemonsets, args.policies, args.runs, unique_placements=args.unique_placements,
            placements=args.placements,
        )  # fmt: skip
        reports.append(report)
        print_report(report.summary())
    if args.json:
        print(json.dumps({"summary": [r.summary() for r in reports], "runs": [asdict(r) for r in reports]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
