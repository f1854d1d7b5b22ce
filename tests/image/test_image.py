"""dsguard's image, built from the Dockerfile here (localcluster/image.py: buildah on a local Debian
base; cached, so only the first run of a checkout builds it), run with runc the way the manifests
run it: the pods' user and groups, a read-only root filesystem, no capabilities, no_new_privs,
their memory limits, an emptyDir /tmp and the webhook's Secret volume (mode 0440, group fsGroup).
No Kubernetes: the real node's tests run the same image in pods.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.image import (
    BuiltImage,
    base_archive,
    build_image,
    import_into_cluster,
    latest_image,
    version,
)
from localcluster.procs import free_port
from tests.support.builders import daemonset, node
from tests.support.polling import poll
from tests.support.runc import (
    Mount,
    RunningContainer,
    UnpackedImage,
    base_deployment,
    pod_container_spec,
    run_once,
    secret_permissions,
    started,
    unpacked_image,
)
from tests.support.tls import CertificateAuthority, SecretVolume

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "manifests" / "base"
DEPLOYMENTS = {"webhook": "webhook.yaml", "guard": "guard.yaml", "certs": "certs.yaml"}
Obj = dict[str, Any]


def deployment(component: str) -> Obj:
    return base_deployment(DEPLOYMENTS[component])


def container_of(dep: Obj) -> Obj:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    return build_image()


@pytest.fixture(scope="module")
def unpacked(image: BuiltImage) -> Iterator[UnpackedImage]:
    with unpacked_image(f"docker-archive:{image.archive}") as u:
        yield u


def test_a_second_build_is_a_cache_hit(image: BuiltImage) -> None:
    t0 = time.monotonic()
    again = build_image()
    elapsed = time.monotonic() - t0
    assert again.cached and again.archive == image.archive and again.key == image.key
    latest = latest_image()
    assert latest is not None and latest.archive == image.archive and latest.cri_ref == image.cri_ref
    assert elapsed < 5.0, f"a cached build took {elapsed:.1f}s"


def test_archive_is_tagged_as_cri_names_the_manifests_image(image: BuiltImage) -> None:
    with tarfile.open(image.archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (manifest,) = json.load(member)
    assert manifest["RepoTags"] == [f"docker.io/library/dsguard:{version()}"] == [image.cri_ref]
    for component in DEPLOYMENTS:
        assert container_of(deployment(component))["image"] == image.ref
    chart = yaml.safe_load((REPO / "manifests/helm/dsguard/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "manifests/helm/dsguard/values.yaml").read_text())
    assert f"{values['image']['repository']}:{values['image'].get('tag') or chart['appVersion']}" == image.ref


def test_image_user_is_the_manifests_user(unpacked: UnpackedImage) -> None:
    assert unpacked.config["Entrypoint"] == ["dsguard"]
    for component in DEPLOYMENTS:
        psc = deployment(component)["spec"]["template"]["spec"]["securityContext"]
        assert unpacked.config["User"] == f"{psc['runAsUser']}:{psc['runAsGroup']}", component


@pytest.mark.parametrize("component", DEPLOYMENTS)
def test_commands_run_as_the_manifests_run_them(
    component: str, unpacked: UnpackedImage, tmp_path: Path, image: BuiltImage
) -> None:
    dep = deployment(component)
    tls = tmp_path / "tls"
    tls.mkdir()
    fields = {"metadata.name": f"dsguard-{component}-0"}  # the downward API's, for the guard's POD_NAME
    spec = pod_container_spec(dep, component, volumes={"tls": tls}, image=unpacked, fields=fields)
    assert spec.uid != 0 and spec.read_only_root and spec.no_new_privileges and not spec.capabilities
    result = run_once(unpacked, spec, tmp_path, args=["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dsguard, version {version()}"
    # The manifests' subcommand (`webhook`, `guard`, `certs run`): its --help, and its flags exist.
    subcommand = [a for a in spec.args if not a.startswith("-")]
    result = run_once(unpacked, spec, tmp_path, args=[*subcommand, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: dsguard {' '.join(subcommand)} [OPTIONS]")
    for flag in {a.split("=")[0] for a in spec.args if a.startswith("--")}:
        assert flag in result.stdout, f"{component}: {flag} is not an option of the image's dsguard"


def _request(
    port: int, ctx: ssl.SSLContext, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _probe(port: int, path: str, ctx: ssl.SSLContext) -> int | None:
    try:
        return _request(port, ctx, "GET", path)[0]
    except OSError:
        return None


def _review(port: int, ctx: ssl.SSLContext, ds: Obj) -> Obj:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5b1e8c8e-1d9e-4a7e-9b1c-2f3a4b5c6d7e",
            "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "name": ds["metadata"]["name"],
            "namespace": ds["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": ds,
        },
    }
    status, body = _request(port, ctx, "POST", "/validate", json.dumps(review).encode())
    assert status == 200, body
    doc: Obj = json.loads(body)
    return doc


def _with_port(args: tuple[str, ...], port: int) -> list[str]:
    return [f"--port={port}" if a.startswith("--port=") else a for a in args]


def test_webhook_serves_tls_from_its_secret_volume(unpacked: UnpackedImage, tmp_path: Path) -> None:
    """The manifests' webhook container: its certificate from a Secret volume (mode 0440, group
    fsGroup, the kubelet's ..data layout) read as uid 65532 on a read-only root filesystem;
    /healthz and /readyz over TLS (the probes' scheme and paths), and a review denied."""
    dep = deployment("webhook")
    pod = dep["spec"]["template"]["spec"]
    (tls_volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    ca = CertificateAuthority.create()
    serving = ca.issue(["127.0.0.1", "dsguard-webhook.dsguard.svc"])
    secret = SecretVolume(tmp_path / "tls")
    secret.update({"tls.crt": serving.cert_pem, "tls.key": serving.key_pem, "ca.crt": ca.pem})
    secret_permissions(
        secret.root, mode=tls_volume["secret"]["defaultMode"], fs_group=pod["securityContext"].get("fsGroup")
    )
    # Fixed facts instead of a cluster: the example log-collector policy and one node.
    facts = tmp_path / "facts"
    facts.mkdir()
    (facts / "policy.yaml").write_text((REPO / "manifests/examples/log-collector.yaml").read_text())
    (facts / "nodes.yaml").write_text(yaml.safe_dump(node("n1", kubelet="v1.33.2", hostname_label=True)))
    for f in [facts, *facts.iterdir()]:
        f.chmod(0o755 if f.is_dir() else 0o644)
    spec = pod_container_spec(dep, "webhook", volumes={"tls": secret.root}, image=unpacked)
    spec = dataclasses.replace(spec, mounts=(*spec.mounts, Mount("/facts", facts, read_only=True)))
    port = free_port()  # the container shares the host's network
    args = [*_with_port(spec.args, port), "--nodes=/facts/nodes.yaml", "--policy-file=/facts/policy.yaml"]
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    with started(unpacked, spec, tmp_path, args=args) as container:
        probes = {
            p["httpGet"]["path"]
            for p in (container_of(dep)["readinessProbe"], container_of(dep)["livenessProbe"])
        }
        assert {p["httpGet"]["scheme"] for p in (container_of(dep)["readinessProbe"],)} == {"HTTPS"}
        for path in sorted(probes):
            poll(
                lambda path=path: _probe(port, path, ctx) == 200 or _exited(container),  # type: ignore[misc]
                timeout=60,
                what=f"{path} of the webhook in the container",
            )
            assert not _exited(container), container.describe()
        bad = daemonset("fluent-bit", "logging", image="cr.fluentbit.io/fluent/fluent-bit:2.0.0")
        response = _review(port, ctx, bad)["response"]
        assert response["allowed"] is False, response
        assert "log-collector" in response["status"]["message"], response
        assert container.status() == "running", container.describe()


def _exited(container: RunningContainer) -> bool:
    return container.status() in ("stopped", "gone")


def test_image_keeps_debians_ca_bundle_not_the_build_hosts(unpacked: UnpackedImage) -> None:
    """The build mounts the host's CA bundle for its RUN steps only: the image has the base's."""
    bundle = Path("etc/ssl/certs/ca-certificates.crt")
    with unpacked_image(f"oci-archive:{base_archive()}") as base:
        assert (unpacked.rootfs / bundle).read_bytes() == (base.rootfs / bundle).read_bytes()


def test_nothing_in_the_image_is_writable_by_its_user(unpacked: UnpackedImage) -> None:
    """A read-only root filesystem hides it anyway, but where a runtime allows writes (a debug
    container, docker run without --read-only) the code and its venv stay the image's."""
    writable = [
        str(p.relative_to(unpacked.rootfs))
        for p in (unpacked.rootfs / "opt/dsguard").rglob("*")
        if not p.is_symlink() and (p.stat().st_uid == 65532 or p.stat().st_mode & 0o002)
    ]
    assert writable == []
    assert re.fullmatch(r"65532:65532", unpacked.config["User"])


CONTAINERD_CONFIG = """version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A containerd of our own (no CRI): its socket. Stopped by pid, its root removed."""
    home = tmp_path / "containerd"
    home.mkdir()
    (home / "config.toml").write_text(CONTAINERD_CONFIG.format(dir=home))
    sock = home / "containerd.sock"
    with (home / "containerd.log").open("w") as log:
        proc = subprocess.Popen(["containerd", "--config", str(home / "config.toml")], stdout=log, stderr=log)
    try:
        poll(
            lambda: (
                subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True).returncode
                == 0
                or proc.poll() is not None
            ),
            timeout=60,
            what="containerd to serve",
        )
        assert proc.poll() is None, (home / "containerd.log").read_text()
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(home / "root"), str(home / "state")], check=False)


def test_make_image_imports_into_a_running_real_nodes_containerd(
    image: BuiltImage, containerd: Path, tmp_path: Path
) -> None:
    """`python -m localcluster image` (what `make image` runs) with a cluster whose state.json names
    a containerd: the image lands there under CRI's name, and the last line is the reference."""
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "state.json").write_text(json.dumps({"containerd_address": str(containerd)}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "localcluster", "image", "--workdir", str(cluster)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == image.ref == "dsguard:" + version()
    assert "imported docker.io/library/dsguard" in proc.stderr
    listed = subprocess.run(
        ["ctr", "--address", str(containerd), "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert image.cri_ref in listed.stdout.split()


def test_make_image_without_a_real_node_imports_nothing(image: BuiltImage, tmp_path: Path) -> None:
    assert import_into_cluster(image, tmp_path) is None  # no cluster
    (tmp_path / "state.json").write_text(json.dumps({"components": []}))
    assert import_into_cluster(image, tmp_path) is None  # a kwok-only cluster
