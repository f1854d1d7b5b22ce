"""`make demo`: a local control plane with dsguard in it, telling its story step by step.

Every step shows what kubectl printed and then checks the outcome it claims, so the demo fails
loudly (exit 1) if dsguard stops doing what it says; tests/cluster/test_demo.py runs it too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from localcluster.cluster import LocalCluster
from localcluster.nodes import create_nodes, node_manifest, wait_nodes_ready
from localcluster.webhook_host import HostWebhook

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "manifests" / "examples"
INFRA_TAINT = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}


class DemoFailed(AssertionError):
    pass


@dataclass
class Story:
    cluster: LocalCluster
    out: TextIO
    step: int = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def title(self, text: str) -> None:
        self.step += 1
        self.say(f"\n\033[1m── Step {self.step}: {text}\033[0m")

    def explain(self, text: str) -> None:
        self.say(textwrap.fill(text, width=100))

    def kubectl(self, *args: str, manifest: dict[str, Any] | None = None, show: str = "") -> Any:
        if args[:1] == ("apply",) and manifest is not None:
            args = (*args, "--server-side", "--field-manager=demo")  # its errors don't echo the whole patch
        shown = show or " ".join(args)
        self.say(f"\033[36m$ kubectl {shown}\033[0m")
        proc = self.cluster.kubectl(*args, input=yaml.safe_dump(manifest) if manifest else None, check=False)
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            self.say(f"  {line}")
        return proc

    def check(self, ok: bool, claim: str) -> None:
        if not ok:
            self.say(f"\033[31m✗ {claim}\033[0m")
            raise DemoFailed(f"step {self.step}: expected: {claim}")
        self.say(f"\033[32m✓ {claim}\033[0m")

    def poll(self, fn: Callable[[], bool], timeout: float, claim: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fn():
                self.check(True, claim)
                return
            time.sleep(0.5)
        self.check(False, claim)


def fluent_bit(image: str, *, max_unavailable: str | int = "50%", name: str = "fluent-bit") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "logging", "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "fluent-bit", "image": image}]},
            },
        },
    }


def nodes_spec() -> list[dict[str, Any]]:
    nodes = [node_manifest(f"general-{i}", kubelet_version="v1.37.2") for i in range(16)]
    nodes += [
        node_manifest(f"infra-{i}", labels={"pool": "infra"}, taints=[INFRA_TAINT], kubelet_version="v1.37.2")
        for i in range(4)
    ]
    nodes += [
        node_manifest(f"legacy-{i}", labels={"pool": "legacy"}, kubelet_version="v1.32.6") for i in range(4)
    ]
    return nodes


def run_story(cluster: LocalCluster, webhook: HostWebhook, out: TextIO = sys.stdout) -> None:
    s = Story(cluster, out)
    s.title("a cluster with 24 nodes: 16 general, 4 tainted infra, 4 legacy on Kubernetes v1.32")
    s.kubectl("get", "nodes", "-L", "pool", "--sort-by=.metadata.name")
    s.kubectl("create", "namespace", "logging")
    s.kubectl("apply", "-f", str(EXAMPLES / "log-collector.yaml"))
    s.poll(lambda: _policies_seen(webhook) >= 1, 20, "the webhook picked up DaemonSetPolicy log-collector")

    s.title("a log collector that forgets the infra taint and rolls out too fast")
    s.explain(
        "fluent-bit has no tolerations, so the DaemonSet controller would skip the 4 tainted infra nodes, "
        "and maxUnavailable 50% would take half the fleet's logging down at once. The policy adds the "
        "tolerations it requires and clamps maxUnavailable to 10%."
    )
    proc = s.kubectl(
        "apply",
        "-f",
        "-",
        manifest=fluent_bit("cr.fluentbit.io/fluent/fluent-bit:3.2.1"),
        show="apply -f fluent-bit.yaml  # 3.2.1, maxUnavailable 50%, no tolerations",
    )
    s.check(
        proc.returncode == 0 and "dsguard added toleration" in proc.stderr, "applied, with dsguard's warnings"
    )
    stored = json.loads(cluster.kubectl("get", "ds", "fluent-bit", "-n", "logging", "-o", "json").stdout)
    spec = stored["spec"]
    jsonpath = "jsonpath={.spec.updateStrategy.rollingUpdate}{'\\n'}{.spec.template.spec.tolerations}{'\\n'}"
    s.kubectl("get", "ds", "fluent-bit", "-n", "logging", "-o", jsonpath)
    s.check(
        spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%", "maxUnavailable clamped to 10%"
    )
    s.poll(
        lambda: _pods_on(cluster, "logging", "app=fluent-bit") == 24,
        90,
        "a pod on all 24 nodes from the DaemonSet controller, tainted infra nodes included",
    )

    s.title("an upgrade to a version the legacy nodes can't run")
    s.explain("Fluent Bit 4.x needs Kubernetes >= 1.33 under this policy; 4 nodes still run kubelet v1.32.6.")
    proc = s.kubectl("apply", "-f", "-", manifest=fluent_bit("cr.fluentbit.io/fluent/fluent-bit:4.0.1"),
                     show="apply -f fluent-bit.yaml   # image 4.0.1")  # fmt: skip
    s.check(proc.returncode != 0 and "legacy-0" in proc.stderr and "v1.32.6" in proc.stderr,
            "denied, naming the legacy nodes and their kubelet version")  # fmt: skip
    image = cluster.kubectl("get", "ds", "fluent-bit", "-n", "logging", "-o",
                            "jsonpath={.spec.template.spec.containers[0].image}").stdout  # fmt: skip
    s.check(image.endswith(":3.2.1"), "the running DaemonSet is untouched (still 3.2.1)")

    s.title("the same check before merging, with no cluster: dsguard check")
    s.explain("CI can run the webhook's rules on manifests offline, against a saved node list.")
    workdir = cluster.workdir / "demo"
    workdir.mkdir(exist_ok=True)
    (workdir / "nodes.yaml").write_text(cluster.kubectl("get", "nodes", "-o", "yaml").stdout)
    (workdir / "fluent-bit.yaml").write_text(
        yaml.safe_dump(fluent_bit("cr.fluentbit.io/fluent/fluent-bit:4.0.1"))
    )
    cmd = ["check", "--policy", str(EXAMPLES / "log-collector.yaml"), "--nodes", str(workdir / "nodes.yaml"),
           str(workdir / "fluent-bit.yaml")]  # fmt: skip
    s.say(
        "\033[36m$ dsguard check --policy manifests/examples/log-collector.yaml"
        " --nodes nodes.yaml fluent-bit.yaml\033[0m"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dsguard.cli", *cmd], capture_output=True, text=True, check=False
    )
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        s.say(f"  {line}")
    s.check(
        proc.returncode == 1 and "legacy-0" in proc.stdout,
        "exit status 1: the offline check gives the webhook's verdict",
    )

    s.title("server-side dry run: the same verdict, nothing stored")
    upgrade = fluent_bit("cr.fluentbit.io/fluent/fluent-bit:4.0.1")
    proc = s.kubectl("apply", "--dry-run=server", "-f", "-", manifest=upgrade,
                     show="apply --dry-run=server -f fluent-bit.yaml   # image 4.0.1")  # fmt: skip
    s.check(proc.returncode != 0 and "denied the request" in proc.stderr, "denied in dry run too")

    s.title("an invalid policy never reaches the webhook")
    bad = yaml.safe_load((EXAMPLES / "log-collector.yaml").read_text())
    bad["metadata"]["name"] = "typo"
    bad["spec"]["rollout"]["maxUnavailable"] = "110%"
    proc = s.kubectl("apply", "-f", "-", manifest=bad, show="apply -f policy.yaml   # maxUnavailable: 110%")
    s.check(
        proc.returncode != 0 and "spec.rollout.maxUnavailable" in proc.stderr,
        "the apiserver rejects it by the CRD schema",
    )
    s.say("\nThe webhook's metrics:")
    for line in webhook.metrics().splitlines():
        if line.startswith("dsguard_webhook_reviews_total{"):
            s.say(f"  {line}")


def _policies_seen(webhook: HostWebhook) -> float:
    for line in webhook.metrics().splitlines():
        if line.startswith("dsguard_policies "):
            return float(line.split()[1])
    return 0.0


def _pods_on(cluster: LocalCluster, namespace: str, selector: str) -> int:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)[
        "items"
    ]
    return len({p["spec"].get("nodeName") for p in pods if p["status"].get("phase") == "Running"})


@contextmanager
def demo_environment(cluster: LocalCluster) -> Iterator[HostWebhook]:
    nodes = nodes_spec()
    create_nodes(cluster.kubectl, nodes)
    wait_nodes_ready(cluster.kubectl, [n["metadata"]["name"] for n in nodes], timeout=90)
    # Only the demo's namespace: the webhook never judges the cluster's own system namespaces.
    with HostWebhook(
        cluster, namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": "logging"}}
    ) as hook:
        yield hook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="cluster work dir (default: a new temp dir)"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    print("Starting a local control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok)...")
    with LocalCluster(args.workdir) as cluster:
        print(f"  up in {time.monotonic() - start:.1f}s; logs in {cluster.logs_dir}")
        try:
            with demo_environment(cluster) as webhook:
                run_story(cluster, webhook)
        except DemoFailed as e:
            print(f"\n\033[31mdemo failed: {e}\033[0m\nlogs: {cluster.logs_dir}", file=sys.stderr)
            return 1
    print(f"\nDemo finished in {time.monotonic() - start:.0f}s; the cluster is stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
