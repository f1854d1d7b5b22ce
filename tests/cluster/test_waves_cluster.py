"""Wave rollouts (spec.guard.waves) on the real control plane: the webhook hands a template change
to the guard (OnDelete), the guard replaces pods wave by wave, and a failure stops the rollout
within the waves started so far. Zones are kwok node labels.

Timings: kwok starts a pod 1s after creation; a crash-looping pod is Ready for 0.5s, then in
CrashLoopBackOff for 3s. The DaemonSets here have minReadySeconds 2, so a crashing pod is never
available and the guard never moves past it (as the DaemonSet controller would, without it).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from localcluster.cluster import LocalCluster
from localcluster.guard_host import HostGuard
from localcluster.nodes import POD_BEHAVIOR_NODES_ANNOTATION
from localcluster.procs import http_get
from localcluster.prometheus import LocalPrometheus
from localcluster.webhook_host import HostWebhook
from tests.support.guard_scenario import BAD_IMAGE, CRASHLOOP, GOOD_IMAGE, Scenario
from tests.support.kubectl import Watch
from tests.support.polling import poll
from tests.support.waves import (
    BAKE_STARTED_AT,
    ORIGINAL_STRATEGY,
    WAVE,
    WAVES_COMPLETED,
    WAVES_REVISION,
    ChattyAgent,
    Exporter,
    add_zoned_nodes,
    all_pods,
    dsguard,
    nodes_on,
    waves_policy,
)

V2 = "registry.example.com/agent:2.0"
V3 = "registry.example.com/agent:3.0"
MIN_READY = 2


def agent(s: Scenario, image: str = GOOD_IMAGE, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    ds = s.daemonset(image=image, annotations=annotations)
    ds["spec"]["minReadySeconds"] = MIN_READY
    return ds


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def webhook_for(cluster: LocalCluster, s: Scenario, policy_file: Path) -> HostWebhook:
    only_this_namespace = {"matchLabels": {"kubernetes.io/metadata.name": s.ns}}
    return HostWebhook(cluster, namespace_selector=only_this_namespace, policy_files=[policy_file])


def start(
    s: Scenario, policy_file: Path, zones: dict[str, int], **guard_kwargs: Any
) -> tuple[dict[str, list[str]], str]:
    """Zoned nodes, the DaemonSet rolled out on the good template, a guard ready: (zones, revision)."""
    by_zone = add_zoned_nodes(s, zones)
    s.apply(agent(s))
    good = s.rolled_out(GOOD_IMAGE)
    g = s.guard(policy_file, **guard_kwargs)
    g.wait_ready()
    return by_zone, good


def test_a_crash_in_the_canary_stays_on_the_canary(cluster: LocalCluster, scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    policy = waves_policy(
        s,
        {"canary": {"nodes": 2}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b", "c"],
         "maxUnavailable": 1, "bakeSeconds": 3},
        alert_url=receiver.url,
    )  # fmt: skip
    by_zone, good = start(s, policy, {"a": 3, "b": 3, "c": 3})
    canary = {by_zone["a"][0], by_zone["b"][0]}
    with webhook_for(cluster, s, policy):
        proc = s.kubectl("apply", "-f", "-", input=json.dumps(agent(s, BAD_IMAGE, CRASHLOOP)))
        assert "dsguard set spec.updateStrategy to OnDelete" in proc.stderr, proc.stderr
        stored = s.ds()
        assert stored["spec"]["updateStrategy"] == {"type": "OnDelete"}
        assert json.loads(stored["metadata"]["annotations"][ORIGINAL_STRATEGY])["type"] == "RollingUpdate"
        paused = s.paused()
        bad = paused["dsguard.io/paused-revision"]
        assert bad != good
        # The pause stopped the deletions: what runs the bad revision now is what did at the decision.
        on_bad = set(s.settled_on(bad))
        assert on_bad and on_bad <= canary, (on_bad, canary)
        kinds = poll(
            lambda: [json.loads(d.body)["kind"] for d in receiver.accepted] or None,
            what="the alert",
            timeout=30,
        )
        assert kinds == ["paused"]
        assert s.ds()["spec"]["updateStrategy"] == {"type": "OnDelete"}
        _code, out, _ = dsguard(s, "status", "-n", s.ns, "agent", "--policy-file", str(policy), "-o", "json")
        report = json.loads(out)["daemonsets"][0]
        assert report["rollout"] == "paused" and report["waves"]["wave"] == 1, report


def test_a_failure_in_a_later_wave_stops_within_it(cluster: LocalCluster, scenario: Scenario) -> None:
    s = scenario
    policy = waves_policy(
        s,
        {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b", "c"],
         "maxUnavailable": 1, "bakeSeconds": 1},
    )  # fmt: skip
    by_zone, _good = start(s, policy, {"a": 3, "b": 3, "c": 3})
    # Broken on zone b only: the canary (a-0) and wave a pass, wave b fails.
    failing = {**CRASHLOOP, POD_BEHAVIOR_NODES_ANNOTATION: ",".join(by_zone["b"])}
    with webhook_for(cluster, s, policy):
        s.apply(agent(s, BAD_IMAGE, failing))
        paused = s.paused(timeout=90)
    bad = paused["dsguard.io/paused-revision"]
    on_bad = set(s.settled_on(bad))
    # canary (1) + wave a (2) + wave b's maxUnavailable (1)
    assert set(by_zone["a"]) <= on_bad, on_bad
    assert len(on_bad) <= 4 and len(on_bad & set(by_zone["b"])) == 1, on_bad
    assert not on_bad & set(by_zone["c"]), "zone c was never touched"
    assert paused[WAVE] == "2", paused  # 0: canary, 1: zone a, 2: zone b


def test_bake_manual_approval_pause_and_a_gitops_reapply(cluster: LocalCluster, scenario: Scenario) -> None:
    s = scenario
    bake = 3
    policy = waves_policy(
        s,
        {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b"],
         "maxUnavailable": 2, "bakeSeconds": bake, "approval": "Manual"},
    )  # fmt: skip
    by_zone, _good = start(s, policy, {"a": 2, "b": 2})
    before = s.ds()["spec"]["updateStrategy"]
    with webhook_for(cluster, s, policy):
        v2 = agent(s, V2)
        s.apply(v2)
        baked = s.annotated(BAKE_STARTED_AT, "the canary's bake to start")
        bake_start = parse(baked[BAKE_STARTED_AT])
        rev = baked[WAVES_REVISION]

        # Manual: after the bake, the guard waits for dsguard promote.
        def waiting() -> dict[str, Any] | None:
            code, out, _err = dsguard(
                s, "status", "-n", s.ns, "agent", "--policy-file", str(policy), "-o", "json"
            )
            w = json.loads(out)["daemonsets"][0]["waves"] if code == 0 else None
            return w if w and "dsguard promote" in w["waiting"] else None

        w = poll(waiting, what="the rollout to wait for dsguard promote", timeout=30)
        assert time.time() >= bake_start + bake
        assert w["wave"] == 1 and nodes_on(s, rev) == {by_zone["a"][0]}, "no pod of wave 2 before approval"

        # A GitOps re-apply of the same manifest mid-rollout: still OnDelete, the rollout goes on.
        proc = s.kubectl("apply", "-f", "-", input=json.dumps(v2))
        assert "dsguard kept spec.updateStrategy OnDelete" in proc.stderr, proc.stderr
        assert s.ds()["spec"]["updateStrategy"] == {"type": "OnDelete"}
        assert s.annotations()[WAVES_REVISION] == rev

        # dsguard pause / promote refused while paused / resume / promote
        code, out, err = dsguard(s, "pause", f"{s.ns}/agent")
        assert code == 0 and "paused" in out, err
        code, out, err = dsguard(s, "promote", f"{s.ns}/agent")
        assert code == 2 and "resume it first" in err, (out, err)
        code, out, err = dsguard(s, "resume", f"{s.ns}/agent")
        assert code == 0 and "continues the wave rollout" in out, (out, err)
        assert s.ds()["spec"]["updateStrategy"] == {"type": "OnDelete"}
        promoted_at = time.time()
        code, out, err = dsguard(s, "promote", f"{s.ns}/agent")
        assert code == 0 and "wave 2 may start" in out, (out, err)

        # wave 3 waits for its own approval, after wave 2's bake
        w = poll(waiting, what="wave 3 to wait for dsguard promote", timeout=60)
        assert w["wave"] == 2, w
        code, out, err = dsguard(s, "promote", f"{s.ns}/agent")
        assert code == 0 and "wave 3 may start" in out, (out, err)
        s.rolled_out(V2, timeout=90)
        assert s.annotated(WAVES_COMPLETED, "the guard to complete the rollout")[WAVES_COMPLETED] == rev
        after = s.ds()
        assert after["spec"]["updateStrategy"] == before, "the user's strategy restored exactly"
        created = [
            parse(p["metadata"]["creationTimestamp"])
            for p in all_pods(s)
            if p["spec"]["nodeName"] != by_zone["a"][0]
        ]
        # creationTimestamp has whole seconds: allow the truncation
        assert min(created) >= int(promoted_at) - 1, "wave 2 started before it was promoted"
        assert s.events("WaveRolloutCompleted"), "the completion Event"


def test_webhook_down_the_guard_takes_over_and_a_joining_node(
    cluster: LocalCluster, scenario: Scenario
) -> None:
    s = scenario
    receiver = s.receiver()
    policy = waves_policy(
        s,
        {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "bakeSeconds": 2,
         "maxUnavailable": 1, "alertOnCompletion": True},
        alert_url=receiver.url,
    )  # fmt: skip
    _by_zone, _good = start(s, policy, {"a": 2, "b": 3})
    before = s.ds()["spec"]["updateStrategy"]
    s.apply(agent(s, V2))  # no webhook: the DaemonSet controller starts its own RollingUpdate
    taken = s.annotated(WAVES_REVISION, "the guard to take the rollout over")
    assert s.ds()["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert "dsguard.io/waves-takeover" in taken
    started = poll(
        lambda: s.events("WaveRolloutStarted") or None, what="the WaveRolloutStarted Event", timeout=15
    )
    assert "did not take the change over" in started[0]["message"], started[0]["message"]
    # A node joins zone b mid-rollout: the controller gives it the new template at once.
    joined = add_zoned_nodes(s, {"b": 1})
    assert joined
    s.rolled_out(V2, timeout=90)
    assert (
        s.annotated(WAVES_COMPLETED, "the guard to complete the rollout")[WAVES_COMPLETED]
        == taken[WAVES_REVISION]
    )
    assert s.ds()["spec"]["updateStrategy"] == before
    kinds = poll(
        lambda: [json.loads(d.body)["kind"] for d in receiver.accepted] or None, what="the alert", timeout=30
    )
    assert kinds == ["completed"], "alertOnCompletion: one completed alert, nothing else"


def test_leaders_killed_mid_bake_and_mid_wave_the_next_one_continues(
    cluster: LocalCluster, scenario: Scenario
) -> None:
    s = scenario
    bake = 6
    policy = waves_policy(
        s,
        {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b"],
         "bakeSeconds": bake, "maxUnavailable": 1},
    )  # fmt: skip
    by_zone = add_zoned_nodes(s, {"a": 2, "b": 4})
    s.apply(agent(s))
    s.rolled_out(GOOD_IMAGE)
    guards = [s.guard(policy, lease_duration=3) for _ in range(3)]
    for g in guards:
        g.wait_ready()
    first = poll(
        lambda: next((g for g in guards if g.identity == s.lease_holder()), None), what="a leader", timeout=15
    )
    pods = Watch(cluster, "pods", "-n", s.ns, "-l", "app=agent")
    try:
        with webhook_for(cluster, s, policy):
            s.apply(agent(s, V2))
            baked = s.annotated(BAKE_STARTED_AT, "the canary's bake to start")
            first.kill()  # mid-bake, no clean shutdown
            second = poll(
                lambda: next((g for g in guards if g is not first and g.identity == s.lease_holder()), None),
                what="a second leader",
                timeout=20,
            )
            # zone b (4 nodes, one at a time, each Ready for minReadySeconds): kill mid-wave
            poll(lambda: s.annotations().get(WAVE) == "2" or None, what="zone b's wave to start", timeout=60)
            second.kill()
            third = poll(
                lambda: next(
                    (g for g in guards if g not in (first, second) and g.identity == s.lease_holder()), None
                ),
                what="a third leader",
                timeout=20,
            )
            s.rolled_out(V2, timeout=90)
            s.annotated(WAVES_COMPLETED, f"{third.identity} to complete the rollout")
    finally:
        pods.close()
    seen: dict[str, set[str]] = {}  # node -> names of the pods of the new image it had (all, to the end)
    while (obj := pods.events.get(timeout=5)) is not None:
        if obj["spec"]["containers"][0]["image"] == V2 and obj["spec"].get("nodeName"):
            seen.setdefault(obj["spec"]["nodeName"], set()).add(obj["metadata"]["name"])
    bake_end = parse(baked[BAKE_STARTED_AT]) + bake
    canary = by_zone["a"][0]
    later = [
        parse(p["metadata"]["creationTimestamp"]) for p in all_pods(s) if p["spec"]["nodeName"] != canary
    ]
    assert min(later) >= int(bake_end), "the bake was cut short"
    assert {n: len(names) for n, names in seen.items()} == dict.fromkeys(s.nodes, 1), (
        "a new pod was deleted again (a node had two pods of the new image)"
    )


def test_rollback_brings_every_updated_node_back(cluster: LocalCluster, scenario: Scenario) -> None:
    s = scenario
    policy = waves_policy(
        s,
        {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b"],
         "maxUnavailable": 1, "bakeSeconds": 1},
        action="Rollback",
    )  # fmt: skip
    by_zone, good = start(s, policy, {"a": 2, "b": 2})
    before = s.ds()["spec"]["updateStrategy"]
    failing = {**CRASHLOOP, POD_BEHAVIOR_NODES_ANNOTATION: ",".join(by_zone["b"])}
    with webhook_for(cluster, s, policy):
        s.apply(agent(s, BAD_IMAGE, failing))
        rolled = s.annotated("dsguard.io/rolled-back-revision", "the guard to roll back", timeout=90)
    assert rolled["dsguard.io/rolled-back-to"].startswith(good)
    assert s.rolled_out(GOOD_IMAGE, timeout=90) == good
    assert s.ds()["spec"]["updateStrategy"] == before, "the user's strategy is back with the old template"


def test_apiserver_gate_pauses_a_chatty_agent_not_steady_traffic(
    cluster: LocalCluster, scenario: Scenario
) -> None:
    s = scenario
    policy = waves_policy(
        s,
        {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b"],
         "maxUnavailable": 1, "bakeSeconds": 3},
        # The rollout makes traffic of its own (pod deletions and creations, status writes, this
        # test's polling): about 10-20 requests/s here, so the steady traffic is well above it.
        gates={"apiserver": {"maxRequestRateIncrease": "100%"}},
    )  # fmt: skip
    by_zone = add_zoned_nodes(s, {"a": 2, "b": 2})
    s.apply(agent(s))
    s.rolled_out(GOOD_IMAGE)
    path = f"/api/v1/namespaces/{s.ns}/pods?limit=1"

    def updated_to(image: str) -> int:
        return sum(1 for p in s.pods() if p["spec"]["containers"][0]["image"] == image)

    g = s.guard(policy, extra_args=["--gate-sample-interval", "500ms"])
    g.wait_ready()
    with webhook_for(cluster, s, policy):
        # Steady traffic, there before the rollout and unchanged by it: the rollout completes.
        steady = ChattyAgent(cluster, path, count=lambda: 0, steady=60).start()
        try:
            # The guard's baseline window (12 samples of 0.5s) must have seen the steady traffic.
            poll(
                lambda: (baseline_rate(g) or 0) >= 50 or None,
                what="the baseline to include the traffic",
                timeout=30,
            )
            s.apply(agent(s, V2))
            s.rolled_out(V2, timeout=90)
            s.annotated(WAVES_COMPLETED, "the rollout with steady traffic to complete")
            assert "dsguard.io/paused" not in s.annotations()
        finally:
            steady.stop()
        # A chatty agent: 60 requests/s more for every updated pod (the steady traffic gone: the
        # new baseline is the quiet cluster's).
        poll(
            lambda: (baseline_rate(g) or 99) < 40 or None,
            what="the guard's baseline rate to forget the steady traffic",
            timeout=30,
        )
        chatty = ChattyAgent(cluster, path, count=lambda: updated_to(V3), per_pod=60).start()
        try:
            s.apply(agent(s, V3))
            paused = s.paused(timeout=90)
        finally:
            chatty.stop()
    reason = paused["dsguard.io/pause-reason"]
    assert "apiserver request rate" in reason and "before the rollout" in reason, reason
    assert len(nodes_on(s, s.newest_revision())) < len(s.nodes), "paused before every node was updated"
    assert by_zone


def baseline_rate(g: HostGuard) -> float | None:
    """The guard's dsguard_guard_apiserver_request_rate{window="baseline"}."""
    _, body = http_get(f"{g.base_url}/metrics", timeout=10)
    for line in body.decode().splitlines():
        if line.startswith('dsguard_guard_apiserver_request_rate{window="baseline"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_prometheus_gate(cluster: LocalCluster, scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    exporter = Exporter()
    try:
        with LocalPrometheus(
            tmp_path / "prometheus", targets=[exporter.target], scrape_interval="1s"
        ) as prom:
            dead = f"http://127.0.0.1:{exporter.port + 1 if exporter.port < 65535 else 1}"
            policy = waves_policy(
                s,
                {"canary": {"nodes": 1}, "groupBy": "topology.kubernetes.io/zone", "order": ["a", "b"],
                 "maxUnavailable": 1, "bakeSeconds": 4},
                gates={"prometheus": [
                    {"url": prom.url, "query": "max(agent_errors)", "max": 0.5},
                    {"url": dead, "query": "up", "min": 1},
                ]},
            )  # fmt: skip
            by_zone, good = start(s, policy, {"a": 2, "b": 2})
            poll(
                lambda: prom.query("max(agent_errors)")["result"] or None,
                what="Prometheus to scrape",
                timeout=30,
            )
            with webhook_for(cluster, s, policy):
                s.apply(agent(s, V2))
                s.annotated(BAKE_STARTED_AT, "the canary's bake (the gates pass)")
                # The unreachable Prometheus is an error: alerted, no pause.
                errors = poll(
                    lambda: s.events("WaveGateError") or None, what="the gate error Event", timeout=30
                )
                assert "prometheus[1]" in errors[0]["message"], errors[0]["message"]
                assert "dsguard.io/paused" not in s.annotations()
                exporter.value = 3.0  # the agent's errors rise
                paused = s.paused(timeout=60)
    finally:
        exporter.stop()
    reason = paused["dsguard.io/pause-reason"]
    assert "'max(agent_errors)' = 3, over max 0.5" in reason, reason
    assert by_zone and good
