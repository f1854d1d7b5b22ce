"""The built image's guard and certs loop, run with runc as their Deployments say (uid 65532, read-only
root filesystem, no capabilities, their memory limits, an emptyDir /tmp) against the real control
plane: the guard takes its Lease and serves its probes, the certs loop writes both Secrets and
injects the CA into both webhook configurations. The container shares the host's network and
reads an admin kubeconfig mounted read-only in place of its ServiceAccount (the manifests' RBAC
is tested by tests/cluster/test_manifests.py; pods on a real node by the real-node tests).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import LocalCluster
from localcluster.image import BuiltImage, build_image
from localcluster.procs import free_port
from localcluster.webhook_host import webhook_configurations
from tests.support.polling import poll
from tests.support.runc import (
    ContainerSpec,
    Mount,
    RunningContainer,
    UnpackedImage,
    base_deployment,
    pod_container_spec,
    started,
    unpacked_image,
)

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    return build_image()


@pytest.fixture(scope="module")
def unpacked(image: BuiltImage) -> Iterator[UnpackedImage]:
    with unpacked_image(f"docker-archive:{image.archive}") as u:
        yield u


def with_kubeconfig(spec: ContainerSpec, cluster: LocalCluster, tmp_path: Path) -> ContainerSpec:
    """The cluster's admin kubeconfig (self-contained), readable by the container's user, at /kube/config."""
    kube = tmp_path / "kube"
    kube.mkdir()
    (kube / "config").write_bytes(cluster.kubeconfig.read_bytes())
    kube.chmod(0o755)
    (kube / "config").chmod(0o444)
    return dataclasses.replace(spec, mounts=(*spec.mounts, Mount("/kube", kube, read_only=True)))


def replace_flags(args: tuple[str, ...], **values: str) -> list[str]:
    """The manifests' args with --flag=VALUE replaced for each flag_name=VALUE given."""
    out = []
    for arg in args:
        name = arg.split("=", 1)[0].removeprefix("--").replace("-", "_")
        out.append(
            f"{arg.split('=', 1)[0]}={values[name]}" if arg.startswith("--") and name in values else arg
        )
    return out


def http_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def running(container: RunningContainer) -> bool:
    return container.status() == "running"


@pytest.mark.cluster
def test_guard_image_takes_its_lease_and_serves_its_probes(
    cluster: LocalCluster, namespace: str, crd: str, unpacked: UnpackedImage, tmp_path: Path
) -> None:
    dep = base_deployment("guard.yaml")
    pod_name = f"dsguard-guard-{uuid.uuid4().hex[:5]}"
    spec = pod_container_spec(dep, "guard", volumes={}, image=unpacked, fields={"metadata.name": pod_name})
    spec = with_kubeconfig(spec, cluster, tmp_path)
    port = free_port()
    args = [*replace_flags(spec.args, lease_namespace=namespace, port=str(port)), "--kubeconfig=/kube/config"]
    with started(unpacked, spec, tmp_path, args=args) as container:
        for path in ("/readyz", "/healthz"):  # the probes' paths, plain HTTP as they say
            poll(
                lambda path=path: http_status(port, path) == 200 or not running(container),  # type: ignore[misc]
                timeout=90,
                what=f"the guard's {path} in the container",
            )
            assert running(container), container.describe()

        def holder() -> str | None:
            proc = cluster.kubectl(
                "get", "lease", "dsguard-guard", "-n", namespace, "-o", "json", check=False
            )
            return json.loads(proc.stdout)["spec"].get("holderIdentity") if proc.returncode == 0 else None

        assert poll(holder, timeout=60, what="the guard's Lease") == pod_name
        assert running(container), container.describe()


@pytest.fixture
def webhook_configs(cluster: LocalCluster, namespace: str) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    names = (f"dsguard-image-{suffix}-mutate", f"dsguard-image-{suffix}-validate")
    docs = webhook_configurations(
        "https://127.0.0.1:1",
        b"",
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    )
    for doc, name in zip(docs, names, strict=True):
        doc["metadata"]["name"] = name
        for hook in doc["webhooks"]:
            del hook["clientConfig"]["caBundle"]  # for the certs loop to inject
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    yield names
    cluster.kubectl(
        "delete", "--ignore-not-found", f"mutatingwebhookconfiguration/{names[0]}",
        f"validatingwebhookconfiguration/{names[1]}", check=False,
    )  # fmt: skip


@pytest.mark.cluster
def test_certs_image_writes_the_secrets_and_injects_the_ca(
    cluster: LocalCluster,
    namespace: str,
    unpacked: UnpackedImage,
    webhook_configs: tuple[str, str],
    tmp_path: Path,
) -> None:
    dep = base_deployment("certs.yaml")
    spec = with_kubeconfig(pod_container_spec(dep, "certs", volumes={}, image=unpacked), cluster, tmp_path)
    mutate, validate = webhook_configs
    args = [
        a
        for a in replace_flags(spec.args, namespace=namespace)
        if not a.startswith("--webhook-configuration=")
    ]
    args += [
        f"--webhook-configuration=mutating/{mutate}",
        f"--webhook-configuration=validating/{validate}",
        "--kubeconfig=/kube/config",
    ]
    secret = next(a.split("=", 1)[1] for a in spec.args if a.startswith("--secret="))

    def injected() -> bool:
        bundles = []
        for kind, name in (
            ("mutatingwebhookconfiguration", mutate),
            ("validatingwebhookconfiguration", validate),
        ):
            doc = json.loads(cluster.kubectl("get", kind, name, "-o", "json").stdout)
            bundles += [h["clientConfig"].get("caBundle", "") for h in doc["webhooks"]]
        return all(bundles)

    with started(unpacked, spec, tmp_path, args=args) as container:
        poll(
            lambda: injected() or not running(container),
            timeout=90,
            what="caBundles injected by the container",
        )
        assert running(container), container.describe()  # a loop: it keeps running (--interval=1h)
        tls = json.loads(cluster.kubectl("get", "secret", secret, "-n", namespace, "-o", "json").stdout)
        assert tls["type"] == "kubernetes.io/tls"
        assert base64.b64decode(tls["data"]["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")
