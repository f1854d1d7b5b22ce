"""What the policy reports add to the guard's background audit, in-process (no cluster, no API).

--nodes nodes (a quarter on an older kubelet), --daemonsets DaemonSets spread over --namespaces
namespaces (half missing a required toleration, a third on an agent build the older kubelets don't
support), three policies (tolerations with coverage, kubelet version rules, rollout caps). The
audit's findings are computed once; then, best of --runs (the machine is shared: the minimum is
the least disturbed run):

  audit           guard.policy_audit.audit with warm placements: the baseline, measured in the
                  same run
  hook            PolicyReportWriter.judged for every DaemonSet: the results the audit hands over
  first sync      hook + every namespace's report built (a store that accepts everything): a new
                  leader, or every result changed
  steady sync     hook + sync when nothing changed: what every later audit pays (no writes)

and the size of the largest report at --max-results with 1 KiB messages (the 1 MiB bound).

    .venv/bin/python bench/policy_reports.py [--nodes 1000] [--daemonsets 200] [--namespaces 20]
        [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsguard.facts import ClusterFacts
from dsguard.policy_reports import OPENREPORTS, RuleResult, build_report, daemonset_results
from dsguard.rules.engine import findings_by_policy
from guard.metrics import GuardMetrics
from guard.policy_audit import audit
from guard.policy_reports import PolicyReportWriter
from tests.support.builders import daemonset, node_info, parsed_policy

AGENT = "registry.example.com/agent"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}


class AcceptingStore:
    async def list(self) -> list[dict[str, Any]]:
        return []

    async def apply(self, namespace: str, body: Mapping[str, Any]) -> None:
        pass

    async def delete(self, namespace: str, name: str) -> None:
        pass


def best_ms(f: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--daemonsets", type=int, default=200)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--max-results", type=int, default=500)
    args = ap.parse_args()

    nodes = tuple(
        node_info(f"n{i}", kubelet="v1.33.2" if i % 4 else "v1.32.5", hostname_label=True)
        for i in range(args.nodes)
    )
    facts = ClusterFacts(nodes=nodes, server_version="v1.33.2")
    policies = [
        parsed_policy("infra", {"tolerations": {"required": [INFRA], "coverage": {"nodeSelector": {}}}}),
        parsed_policy(
            "versions",
            {
                "enforcement": "Audit",
                "versions": {
                    "rules": [
                        {"image": AGENT, "compatibility": [{"kubernetes": ">=1.33.0", "versions": ">=2.0.0"}]}
                    ]
                },
            },
        ),
        parsed_policy("caps", {"rollout": {"maxUnavailable": "10%"}}),
    ]
    dss = []
    for i in range(args.daemonsets):
        obj = daemonset(
            f"ds{i}", namespace=f"ns{i % args.namespaces}", image=f"{AGENT}:{'2.1.0' if i % 3 else '1.9.0'}",
            tolerations=[INFRA] if i % 2 else None, app_label=True,
        )  # fmt: skip
        obj["metadata"]["uid"] = f"uid-{i}"
        dss.append(obj)
    present = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in dss}
    judged = [(d, findings_by_policy(policies, d, facts=facts)) for d in dss]
    loop = asyncio.new_event_loop()

    def writer() -> PolicyReportWriter:
        return PolicyReportWriter(OPENREPORTS, AcceptingStore(), GuardMetrics(), max_results=args.max_results)

    audit(policies, dss, facts)  # warm the placement memo
    base = best_ms(lambda: audit(policies, dss, facts), args.runs)
    w = writer()

    def hand_over() -> None:
        for o, j in judged:
            w.judged(o, j)

    hook = best_ms(hand_over, args.runs)

    def first() -> None:
        fresh = writer()
        for o, j in judged:
            fresh.judged(o, j)
        loop.run_until_complete(fresh.sync(present))

    first_ms = best_ms(first, args.runs)
    loop.run_until_complete(w.sync(present))

    def steady() -> None:
        for o, j in judged:
            w.judged(o, j)
        loop.run_until_complete(w.sync(present))

    steady_ms = best_ms(steady, args.runs)
    results = sum(len(daemonset_results(o, j)) for o, j in judged)
    print(
        f"{args.nodes} nodes, {args.daemonsets} DaemonSets in {args.namespaces} namespaces, "
        f"{len(policies)} policies ({results} results), best of {args.runs}:"
    )
    print(f"  audit (baseline, warm placements)   {base:7.2f} ms")
    print(f"  hook (results from its findings)    {hook:7.2f} ms  (+{hook / base:.0%} of the audit)")
    print(f"  first sync (all reports built)      {first_ms:7.2f} ms  (+{first_ms / base:.0%})")
    print(f"  steady sync (nothing changed)       {steady_ms:7.2f} ms  (+{steady_ms / base:.0%}, no writes)")
    long = [
        RuleResult("ns", f"daemonset-{i:04d}", "some-policy", "versions", "fail", "x" * 1024, uid=f"uid-{i}")
        for i in range(1000)
    ]
    for cap in (args.max_results, 1000):
        body = build_report(
            OPENREPORTS, "ns", long, previous=None, now=dt.datetime.now(dt.UTC), max_results=cap
        )
        print(
            f"  report with 1000 failing results, --policy-report-max-results {cap}: "
            f"{len(body['results'])} listed, {len(orjson.dumps(body)) / 1024:.0f} KiB"
        )
    loop.close()


if __name__ == "__main__":
    main()
