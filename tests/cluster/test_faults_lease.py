"""Lease loss: the leading guard cut off from the apiserver by a network partition.

Two guard replicas on the real control plane; the leader reaches the apiserver through a TCP proxy
the test controls (tests/support/tcp_proxy.py), the other directly. The test cuts the proxy, either
as a dropped network (blackhole: connections go silent, a request never answers) or as a reset
one, then rolls out a crash-looping build. The cut-off leader must stop acting within the lease
duration (guard/leader.py: its term ends at the renew deadline, and no hung request can stretch
it), the other replica must take over and pause once, with one Event and one alert. With the proxy
restored, the old leader catches up and rejoins as a follower: it does not act.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from localcluster.guard_host import LEASE_NAMESPACE
from tests.support.guard_scenario import BAD_IMAGE, CRASHLOOP, Scenario, assert_signed_alert, setup_rollout
from tests.support.polling import poll
from tests.support.tcp_proxy import TcpProxy, kubeconfig_through

LEASE_SECONDS = 6  # renew deadline 4 s, retry 0.8 s (guard/main.py)


def lease_record(s: Scenario) -> dict[str, str]:
    spec = s.cluster.kubectl_json("get", "lease", s.lease, "-n", LEASE_NAMESPACE)["spec"]
    return {"holder": str(spec.get("holderIdentity") or ""), "renewed": str(spec.get("renewTime") or "")}


@pytest.mark.parametrize("cut", ["blackhole", "reset"])
def test_leader_cut_off_steps_down_the_other_pauses_once_and_it_rejoins_as_a_follower(
    scenario: Scenario, tmp_path: Path, cut: str
) -> None:
    s = scenario
    receiver = s.receiver()
    policy = s.policy(alert_url=receiver.url)
    with TcpProxy(s.cluster.ports.apiserver) as proxy:
        via_proxy = kubeconfig_through(proxy, s.cluster.kubeconfig, tmp_path / "via-proxy.kubeconfig")
        cut_off = s.guard(policy, lease_duration=LEASE_SECONDS, kubeconfig=via_proxy)
        good = setup_rollout(s, [cut_off])
        poll(
            lambda: lease_record(s)["holder"] == cut_off.identity,
            what="the proxied guard to lead",
            timeout=30,
        )
        other = s.guard(policy, lease_duration=LEASE_SECONDS)
        other.wait_ready()
        assert other.metric("dsguard_guard_leader") == 0
        watch = s.watch()

        t_cut = time.monotonic()
        getattr(proxy, cut)()
        s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))

        # The cut-off leader knows it no longer leads within the lease duration (its guard loop
        # and the audit check is_leader() before every action, which turns False with it).
        poll(lambda: cut_off.metric("dsguard_guard_leader") == 0, what="the cut-off leader to step down",
             timeout=LEASE_SECONDS * 3, interval=0.1)  # fmt: skip
        stepped_down = time.monotonic() - t_cut
        assert stepped_down < LEASE_SECONDS, f"stepped down {stepped_down:.1f}s after the cut"
        assert "lost leadership" in cut_off.log_text()

        poll(lambda: other.metric("dsguard_guard_leader") == 1, what="the other replica to take over",
             timeout=LEASE_SECONDS * 4, interval=0.1)  # fmt: skip
        took_over = time.monotonic() - t_cut
        annotations = s.paused(timeout=60)
        bad = annotations["dsguard.io/paused-revision"]
        assert bad != good
        delivery = poll(lambda: receiver.accepted, what="the alert at the receiver", timeout=30)[0]
        assert_signed_alert(s, delivery, kind="paused", revision=bad)
        events = poll(lambda: s.events("RolloutPaused"), what="the RolloutPaused Event")
        assert events[0]["reportingInstance"] == other.identity

        # Restored: the old leader reconnects and relists; it must see the pause and stay a follower.
        proxy.restore()
        t_restore = time.monotonic()
        poll(lambda: cut_off.metric("dsguard_guard_failing_pods") >= 3,
             what="the old leader to catch up (its view of the failing pods)", timeout=60)  # fmt: skip
        # A whole lease duration of the other's renewals after the restore: time enough for the old
        # leader to grab the Lease (or act) if it wrongly would.
        first = lease_record(s)
        poll(
            lambda: time.monotonic() - t_restore > LEASE_SECONDS * 1.5 and lease_record(s) != first,
            what="the other replica to keep renewing for a lease duration after the restore",
            timeout=LEASE_SECONDS * 4,
        )
        assert lease_record(s)["holder"] == other.identity
        assert cut_off.metric("dsguard_guard_leader") == 0
        assert cut_off.metric("dsguard_guard_actions_total") == 0
        assert cut_off.metric("dsguard_guard_alerts_resent_total") == 0
        assert other.metric("dsguard_guard_actions_total", step="pause") == 1
        assert len(watch.pauses()) == 1, watch.pauses()
        assert len(s.events("RolloutPaused")) == 1
        assert len(receiver.deliveries) == 1, [json.loads(d.body) for d in receiver.deliveries]
        assert cut_off.alive(), "the cut-off guard must survive the partition"
        health = cut_off.metrics_text()  # still serving
        assert "dsguard_guard_leader" in health
        print(
            f"lease cut ({cut}): stepped down after {stepped_down:.2f}s, the other led after {took_over:.2f}s"
        )
