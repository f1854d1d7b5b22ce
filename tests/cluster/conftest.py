"""Fixtures for tests against a real control plane (everything under tests/cluster).

* ``cluster`` (session): a LocalCluster started once per session from the binaries that
  localcluster/gobuild/build.sh built (building them first if needed, which takes long cold).
  With ``DSGUARD_TEST_KUBECONFIG=/path/to/kubeconfig`` the tests use that cluster instead
  (e.g. kind) and only the built kwok is started against it (``DSGUARD_TEST_RUN_KWOK=0`` if
  the cluster already runs kwok with localcluster/kwok/stages.yaml).
* ``namespace``: a fresh namespace per test (with its `default` ServiceAccount), deleted after.
* ``kwok_nodes``: a factory creating Ready kwok nodes labelled ``dsguard.test/group=<namespace>``;
  they are deleted (and pods still bound to them force-deleted) after the test
  (tests/support/kwok.py).
* ``crd``: the DaemonSetPolicy CRD, applied and Established.
* ``scenario``: the guard end-to-end world of tests/support/guard_scenario.py (with ``alert_tls``,
  the alert receiver's certificate, one per module).

Helpers (no fixtures) are in tests/support/; no test module imports another.

Every test here is marked ``cluster``; a failing test's report names the cluster's logs dir.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from localcluster.cluster import LocalCluster
from localcluster.webhook_host import apply_crd
from tests.support.guard_scenario import Scenario
from tests.support.kwok import KwokNodes
from tests.support.polling import poll
from tests.support.tls import TLSFiles, write_tls_files

HERE = Path(__file__).resolve().parent

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
    poll(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        what=f"namespace {name}: its default ServiceAccount", timeout=30,
    )  # fmt: skip
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def kwok_nodes(cluster: LocalCluster, namespace: str) -> Iterator[KwokNodes]:
    factory = KwokNodes(cluster, namespace)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> str:
    """The DaemonSetPolicy CRD, applied (idempotently) and Established. DaemonSetPolicies are
    cluster-scoped: a test's policies must match only its own namespace and be deleted after."""
    return apply_crd(cluster)


@pytest.fixture(scope="module")
def alert_tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """The alert receiver's serving certificate (the guards trust its CA through SSL_CERT_FILE)."""
    return write_tls_files(tmp_path_factory.mktemp("alert-tls"))


@pytest.fixture
def scenario(
    cluster: LocalCluster, namespace: str, tmp_path: Path, alert_tls: TLSFiles
) -> Iterator[Scenario]:
    s = Scenario(cluster, namespace, tmp_path, alert_tls)
    try:
        yield s
    finally:
        s.cleanup()
