"""Fixtures for tests against a real control plane (everything under tests/cluster).

* ``cluster`` (session): a LocalCluster started once per session from the binaries that
  localcluster/gobuild/build.sh built (building them first if needed, which takes long cold).
  With ``DSGUARD_TEST_KUBECONFIG=/path/to/kubeconfig`` the tests use that cluster instead
  (e.g. kind) and only the built kwok is started against it (``DSGUARD_TEST_RUN_KWOK=0`` if
  the cluster already runs kwok with localcluster/kwok/stages.yaml).
* ``namespace``: a fresh namespace per test (with its `default` ServiceAccount), deleted after.
* ``kwok_nodes``: a factory creating Ready kwok nodes labelled ``dsguard.test/group=<namespace>``;
  they are deleted (and pods still bound to them force-deleted) after the test.

Every test here is marked ``cluster``; a failing test's report names the cluster's logs dir.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from localcluster.cluster import LocalCluster
from localcluster.nodes import create_nodes, delete_nodes, node_manifest, wait_nodes_ready
from localcluster.webhook_host import CRD

HERE = Path(__file__).resolve().parent
GROUP_LABEL = "dsguard.test/group"

_session_cluster: LocalCluster | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _session_cluster is not None and "cluster" in getattr(item, "fixturenames", ()):
        c = _session_cluster
        report.sections.append(
            (
                "local cluster",
                f"logs:       {c.logs_dir}\nkubeconfig: {c.kubeconfig}\nserver:     {c.server}",
            )
        )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    c = _session_cluster
    if c is None:
        return
    t = c.timings
    terminalreporter.write_line(
        f"local cluster: {c.server} started in {t.total:.1f}s "
        f"(etcd {t.etcd:.1f}s, apiserver {t.apiserver:.1f}s, controllers+kwok {t.controllers:.1f}s); "
        f"logs in {c.logs_dir}"
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    global _session_cluster
    external = os.environ.get("DSGUARD_TEST_KUBECONFIG")
    if external:
        c = LocalCluster.attach(
            external,
            workdir=tmp_path_factory.mktemp("external-cluster"),
            run_kwok=os.environ.get("DSGUARD_TEST_RUN_KWOK", "1") != "0",
        )
    else:
        c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    _session_cluster = c
    try:
        yield c
    finally:
        c.stop()


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{_slug(request.node.name, 40)}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are rejected until the serviceaccount controller has created `default`.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {name}: no default ServiceAccount after 30s")
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


class KwokNodes:
    """Creates kwok nodes for one test; names are ``<namespace>-<suffix>``."""

    def __init__(self, cluster: LocalCluster, group: str) -> None:
        self.cluster = cluster
        self.group = group
        self.names: list[str] = []

    def __call__(
        self,
        count: int = 1,
        *,
        suffix: str = "n",
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] | None = None,
        kubelet_version: str = "v1.37.2",
        annotations: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> list[str]:
        start = len(self.names)
        names = [f"{self.group}-{suffix}{start + i}" for i in range(count)]
        manifests = [
            node_manifest(
                n,
                labels={GROUP_LABEL: self.group, **(labels or {})},
                taints=taints,
                kubelet_version=kubelet_version,
                annotations=annotations,
            )
            for n in names
        ]
        create_nodes(self.cluster.kubectl, manifests)
        self.names += names
        if wait:
            wait_nodes_ready(self.cluster.kubectl, names, timeout=60)
        return names

    def cleanup(self) -> None:
        delete_nodes(self.cluster.kubectl, self.names)


@pytest.fixture
def kwok_nodes(cluster: LocalCluster, namespace: str) -> Iterator[KwokNodes]:
    factory = KwokNodes(cluster, namespace)
    yield factory
    factory.cleanup()


T = TypeVar("T")


def poll(what: str, fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2) -> T:
    """fn() until it returns something truthy; TimeoutError naming `what` (and fn's last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> str:
    """The DaemonSetPolicy CRD, applied (idempotently) and Established. DaemonSetPolicies are
    cluster-scoped: a test's policies must match only its own namespace and be deleted after."""
    cluster.kubectl("apply", "-f", str(CRD))
    name = "daemonsetpolicies.dsguard.io"
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return name
