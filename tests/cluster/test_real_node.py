"""The local cluster's real node (localcluster/realnode.py): real containers with real pod IPs,
reachable through a ClusterIP Service; the apiserver reachable from pods through the
`kubernetes` Service; `kubectl logs` through the kubelet; kwok nodes beside it on their own pod
range. Stop leaves nothing on the machine, twice in a row (no state accumulates).

These tests need root, cgroups, overlayfs and the Debian packages of
localcluster/apt/node.txt (`make node-packages`). On a machine without them they fail,
naming what is missing; DSGUARD_NO_REAL_NODE=1 opts out (documented in docs/local-cluster.md).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcluster import containerd, host_state
from localcluster.cluster import ClusterBusy, ClusterError, LocalCluster
from localcluster.nodes import create_nodes, node_manifest, wait_nodes_ready
from localcluster.procs import http_get
from localcluster.realnode import NODE_NAME, POD_SUBNET
from tests.support.node_images import NodeImage, build_http_echo
from tests.support.polling import poll
from tests.support.real_node import require_real_node


@pytest.fixture(scope="module", autouse=True)
def _real_node_possible() -> None:
    """Module-scoped and autouse: it runs before echo_image needs gcc."""
    require_real_node()


@pytest.fixture(scope="module")
def echo_image(_real_node_possible: None, tmp_path_factory: pytest.TempPathFactory) -> NodeImage:
    return build_http_echo(tmp_path_factory.mktemp("images"))


def _manifests(image: str, ns: str) -> str:
    pin = {"kubernetes.io/hostname": NODE_NAME}
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "echo", "namespace": ns, "labels": {"app": "echo"}},
            "spec": {
                "nodeSelector": pin,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "echo",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": ns},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def _probe_pod(image: str, ns: str, targets: list[str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "namespace": ns},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": NODE_NAME},
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "probe", "image": image, "imagePullPolicy": "Never", "args": ["probe", *targets]}
                ],
            },
        }
    )


def _phase(c: LocalCluster, ns: str, name: str) -> dict[str, str]:
    """The pod's phase, IP and Ready condition ("True"/"False")."""
    pod = c.kubectl_json("get", "pod", name, "-n", ns)
    ready = any(
        cond["type"] == "Ready" and cond["status"] == "True" for cond in pod["status"].get("conditions", [])
    )
    return {
        "phase": pod["status"].get("phase", ""),
        "ip": pod["status"].get("podIP", ""),
        "ready": str(ready),
    }


def _shim_sockets() -> set[str]:
    d = containerd.SHIM_SOCKET_DIR
    return set(os.listdir(d)) if d.is_dir() else set()


def _one_round(workdir: Path, image: NodeImage, *, try_a_second: bool = False) -> dict[str, float]:
    forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    shim_sockets_before = _shim_sockets()
    c = LocalCluster(workdir, real_node=True, node_images=[image.archive], dsguard_image=False)
    t0 = time.monotonic()
    c.start()
    started = time.monotonic() - t0
    node = c.real_node
    assert node is not None
    try:
        state = json.loads(c.state_file.read_text())
        assert state["real_node"]["containerd_socket"] == state["containerd_address"] == str(node.socket)

        # kwok nodes beside the real one, handing out fake IPs from another range.
        create_nodes(c.kubectl, [node_manifest("kwok-0")])
        wait_nodes_ready(c.kubectl, ["kwok-0"])
        ns = "realnode"
        c.kubectl("create", "namespace", ns)
        poll(lambda: c.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             what="the default ServiceAccount", timeout=30)  # fmt: skip
        c.kubectl("apply", "-f", "-", input=_manifests(image.ref, ns))

        def echo_ready() -> dict[str, str] | None:
            st = _phase(c, ns, "echo")
            return st if st["ready"] == "True" else None

        st = poll(echo_ready, what="echo pod Ready", timeout=90)
        assert st["phase"] == "Running"
        assert ipaddress.ip_address(st["ip"]) in ipaddress.ip_network(POD_SUBNET), st

        svc = c.kubectl_json("get", "service", "echo", "-n", ns)
        cluster_ip = svc["spec"]["clusterIP"]

        # From the host, through kube-proxy's rules: the pod answers with its hostname.
        def answered() -> bytes | None:
            try:
                status, body = http_get(f"http://{cluster_ip}:80/", timeout=2.0)
            except OSError:
                return None
            return body if status == 200 else None

        assert poll(answered, what=f"echo through ClusterIP {cluster_ip}", timeout=60).strip() == b"echo"

        # From a pod: the echo Service and the apiserver through the `kubernetes` Service.
        c.kubectl("apply", "-f", "-", input=_probe_pod(image.ref, ns, [f"{cluster_ip}:80", "10.96.0.1:443"]))

        def probe_done() -> str | None:
            phase = _phase(c, ns, "probe")["phase"]
            return phase if phase in ("Succeeded", "Failed") else None

        phase = poll(probe_done, what="the probe pod to finish", timeout=90)
        logs = c.kubectl("logs", "probe", "-n", ns).stdout  # through the kubelet's API
        assert phase == "Succeeded", logs
        assert f"probe {cluster_ip}:80 ok" in logs and "probe 10.96.0.1:443 ok" in logs, logs

        if try_a_second:
            # A second real node on the machine is refused, and its failed start leaves the
            # running node's machine-wide state (cni0, chains, cgroups) alone.
            kube_chains = {ch for ch in host_state.chains() if ch.startswith("iptables nat KUBE-")}
            with pytest.raises(ClusterBusy, match="another real node's state"):
                LocalCluster(workdir.parent / "second", real_node=True).start()
            assert host_state.bridge_exists()
            assert kube_chains <= set(host_state.chains())
            assert answered() == b"echo\n"
            status = c.kubectl_json("get", "pod", "echo", "-n", ns)["status"]
            assert status["containerStatuses"][0]["restartCount"] == 0
    finally:
        t1 = time.monotonic()
        c.stop()
        stopped = time.monotonic() - t1
    # Nothing of the node is left: processes, mounts, cni0, chains, cgroups, log links, state dir.
    assert node.leftovers() == []
    assert host_state.leftovers(needles=[str(workdir) + "/"], mount_prefixes=[workdir]) == []
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward_before
    assert _shim_sockets() - shim_sockets_before == set()  # containerd 1.6's fixed /run/containerd/s
    return {
        "start": started,
        "node": node.timings.total,
        "stop": stopped,
        "node teardown": node.timings.teardown,
    }


def test_real_node_runs_pods_and_stop_leaves_nothing_twice(tmp_path: Path, echo_image: NodeImage) -> None:
    rounds = [_one_round(tmp_path / f"run{i}", echo_image, try_a_second=i == 1) for i in (1, 2)]
    print(f"real-node cluster start/stop (s): {rounds}")


def test_clean_node_removes_what_a_killed_node_left(tmp_path: Path, echo_image: NodeImage) -> None:
    """Every process of a cluster with a running pod SIGKILLed (no stop, as when the machine's
    session dies): shims, the pod's container, mounts, cni0, chains and cgroups stay, and a new
    real node is refused; `python -m localcluster clean-node` removes them all."""
    workdir = tmp_path / "killed"
    c = LocalCluster(
        workdir, real_node=True, node_images=[echo_image.archive], dsguard_image=False, die_with_parent=False
    )
    c.start()
    try:
        ns = "killed"
        c.kubectl("create", "namespace", ns)
        poll(lambda: c.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
             what="the default ServiceAccount", timeout=30)  # fmt: skip
        c.kubectl("apply", "-f", "-", input=_manifests(echo_image.ref, ns))
        poll(lambda: _phase(c, ns, "echo")["ready"] == "True", what="echo pod Ready", timeout=90)
    finally:
        for pid in c.component_pids().values():  # processes this test started
            os.kill(pid, signal.SIGKILL)
    c.state_file.unlink()
    shim_sockets = _shim_sockets()
    left = host_state.leftovers(needles=[str(workdir) + "/", "/run/dsguard-node/"], mount_prefixes=[workdir])
    assert any(x.startswith("chain ") for x in left) and "link cni0" in left, left
    with pytest.raises(ClusterError, match="clean-node"):
        LocalCluster(tmp_path / "next", real_node=True, dsguard_image=False).start()

    proc = subprocess.run(
        [sys.executable, "-m", "localcluster", "clean-node"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    left = host_state.leftovers(needles=[str(workdir) + "/", "/run/dsguard-node/"], mount_prefixes=[workdir])
    assert left == []
    assert not Path("/run/dsguard-node").exists()
    assert _shim_sockets() < shim_sockets  # the killed shims' sockets are gone too
