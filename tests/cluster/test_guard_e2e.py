"""The rollout guard end to end: `dsguard guard` against the real control plane and kwok.

The real DaemonSet controller rolls DaemonSets out over 20 kwok nodes per test (labelled
`dsguard.test/group=<namespace>`, the DaemonSet's nodeSelector), kwok plays the pods (a
crash-looping template carries the pod annotation `dsguard.test/behavior: crashloop`), and the
guard runs as a child process (localcluster.guard_host.HostGuard) with a static policy for the
test's namespace. Alerts go to an HTTPS receiver on 127.0.0.1 with a throwaway CA that the guard
trusts through SSL_CERT_FILE; the HMAC key is a Secret the test creates.

Timings of the bad template (kwok annotations): new pods start 1s after creation, run 0.5s,
then sit in CrashLoopBackOff for 3s. The first two updated pods are Ready for 0.5s, long enough
for the DaemonSet controller to replace two more; those are created while the first two still
run and become Ready after they crashed, so the controller then waits (2 unavailable =
maxUnavailable) and the guard sees 3+ failing pods about 2.5s after the rollout began.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
import yaml
from aiohttp import web

from guard.notify.sinks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify_signature
from localcluster.cluster import LocalCluster
from localcluster.guard_host import LEASE_NAMESPACE, HostGuard
from localcluster.nodes import (
    POD_BEHAVIOR_ANNOTATION,
    POD_TIMING_ANNOTATIONS,
    NodeBehavior,
    PodBehavior,
    create_nodes,
    delete_nodes,
    node_manifest,
)
from localcluster.procs import free_port
from tests.cluster.conftest import GROUP_LABEL
from tests.cluster.conftest import poll as poll  # re-exported: other guard tests import it from here
from tests.support.tls import TLSFiles, write_tls_files

NODES = 20
MAX_UNAVAILABLE = 2
THRESHOLD = 3
REVISION_LABEL = "controller-revision-hash"
GOOD_IMAGE = "registry.example.com/agent:1.0"
BAD_IMAGE = "registry.example.com/agent:1.1-broken"
CRASHLOOP = {
    POD_BEHAVIOR_ANNOTATION: PodBehavior.CRASHLOOP.value,
    POD_TIMING_ANNOTATIONS["start_delay"]: "1s",
    POD_TIMING_ANNOTATIONS["run_for"]: "500ms",
    POD_TIMING_ANNOTATIONS["backoff"]: "3s",
}
PAUSE_ANNOTATIONS = (
    "dsguard.io/paused",
    "dsguard.io/pause-reason",
    "dsguard.io/paused-revision",
    "dsguard.io/paused-at",
    "dsguard.io/original-update-strategy",
)
SINK = "webhook-0"  # build_sinks names the first alert sink of a policy so
GUARD_FLAGS = {"tick": 0.2}

T = TypeVar("T")
Obj = dict[str, Any]


# --- the alert receiver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    status: int  # what the receiver answered
    at: float  # time.monotonic()

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class AlertReceiver:
    """An HTTPS endpoint (aiohttp, in a thread with its own loop) recording every POST /alerts.

    It answers 503 to the first `fail_first` requests and 200 after that.
    """

    def __init__(self, tls: TLSFiles, port: int | None = None, *, fail_first: int = 0) -> None:
        self.tls = tls
        self.port = port or free_port()
        self.fail_first = fail_first
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/alerts"

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status == 200]

    def start(self) -> Self:
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(started, failure)), name="alert-receiver", daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the alert receiver did not start in 10s")
        if failure:
            raise failure[0]
        return self

    async def _serve(self, started: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/alerts", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=ctx).start()
        except OSError as e:
            failure.append(e)
            started.set()
            await runner.cleanup()
            return
        started.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            status = 503 if len(self._deliveries) < self.fail_first else 200
            headers = {k.lower(): v for k, v in request.headers.items()}
            self._deliveries.append(Delivery(headers, body, status, time.monotonic()))
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)


# --- the DaemonSet as the apiserver stored each version of it -------------------------------------


class DaemonSetWatch:
    """`kubectl get daemonset --watch -o json` in a thread: every stored version, in order."""

    def __init__(self, cluster: LocalCluster, namespace: str, name: str) -> None:
        self._proc = cluster.kubectl_popen("get", "daemonset", name, "-n", namespace, "--watch", "-o", "json")
        self._lock = threading.Lock()
        self._versions: list[Obj] = []
        self._thread = threading.Thread(target=self._read, name=f"watch-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        buf: list[str] = []
        for line in self._proc.stdout:
            buf.append(line)
            if line.rstrip("\n") == "}":  # kubectl ends each top-level object with "}" alone
                obj = json.loads("".join(buf))
                buf = []
                with self._lock:
                    self._versions.append(obj)

    @property
    def versions(self) -> list[Obj]:
        with self._lock:
            return list(self._versions)

    def pauses(self) -> list[str]:
        """paused-at of each change from not paused to paused."""
        out: list[str] = []
        was = False
        for v in self.versions:
            annotations = v["metadata"].get("annotations") or {}
            now = annotations.get("dsguard.io/paused") == "true"
            if now and not was:
                out.append(annotations.get("dsguard.io/paused-at", ""))
            was = now
        return out

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# --- one test's world ---------------------------------------------------------------------------


class Scenario:
    """One test's namespace, nodes, DaemonSet `agent`, policy file, guards and receivers."""

    def __init__(self, cluster: LocalCluster, namespace: str, tmp_path: Path, tls: TLSFiles) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.tmp_path = tmp_path
        self.tls = tls
        self.nodes: list[str] = []
        self.guards: list[HostGuard] = []
        self.receivers: list[AlertReceiver] = []
        self.watches: list[DaemonSetWatch] = []
        self.hmac_key = b""
        self.lease = f"guard-{namespace}"

    # -- setup ------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl(*args, input=input, check=check)

    def add_nodes(self, count: int = NODES) -> list[str]:
        """kwok nodes `<namespace>-n<i>` labelled for this test's DaemonSet. Not waited for: the
        DaemonSet controller places pods once they are Ready and untainted (see rolled_out)."""
        names = [f"{self.ns}-n{i}" for i in range(len(self.nodes), len(self.nodes) + count)]
        self.nodes += names
        create_nodes(self.cluster.kubectl, [node_manifest(n, labels={GROUP_LABEL: self.ns}) for n in names])
        return names

    def hmac_secret(self) -> dict[str, str]:
        """A Secret holding a random HMAC key; returns its reference for the policy."""
        self.hmac_key = secrets.token_bytes(32)
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "alert-hmac", "namespace": self.ns},
                    "data": {"key": base64.b64encode(self.hmac_key).decode()},
                }
            ),
        )
        return {"namespace": self.ns, "name": "alert-hmac", "key": "key"}

    def policy(self, *, action: str = "Pause", alert_url: str | None = None) -> Path:
        guard: dict[str, Any] = {"failureThreshold": THRESHOLD, "action": action}
        if alert_url is not None:
            guard["alerts"] = [{"type": "Webhook", "url": alert_url, "hmacSecretRef": self.hmac_secret()}]
        doc = {
            "apiVersion": "dsguard.io/v1alpha1",
            "kind": "DaemonSetPolicy",
            "metadata": {"name": f"guard-{self.ns}"},
            "spec": {"match": {"namespaces": [self.ns]}, "guard": guard},
        }
        path = self.tmp_path / f"policy-{action.lower()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def receiver(self, port: int | None = None, *, fail_first: int = 0, start: bool = True) -> AlertReceiver:
        r = AlertReceiver(self.tls, port, fail_first=fail_first)
        self.receivers.append(r)
        return r.start() if start else r

    def guard(self, policy: Path, *, start: bool = True, **kwargs: Any) -> HostGuard:
        """A guard process (not waited for: call wait_ready()); it trusts the receiver's CA."""
        g = HostGuard(
            self.cluster,
            policy_files=[policy],
            env={"SSL_CERT_FILE": str(self.tls.ca_file)},
            lease_name=self.lease,
            **{**GUARD_FLAGS, **kwargs},
        )
        self.guards.append(g)
        return g.start(wait=False) if start else g

    def daemonset(self, image: str = GOOD_IMAGE, annotations: Mapping[str, str] | None = None) -> Obj:
        return {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": self.ns},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": MAX_UNAVAILABLE},
                },
                "template": {
                    "metadata": {"labels": {"app": "agent"}, "annotations": dict(annotations or {})},
                    "spec": {
                        "nodeSelector": {GROUP_LABEL: self.ns},
                        "containers": [{"name": "agent", "image": image}],
                    },
                },
            },
        }

    def apply(self, obj: Obj) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def watch(self) -> DaemonSetWatch:
        w = DaemonSetWatch(self.cluster, self.ns, "agent")
        self.watches.append(w)
        return w

    # -- reading the cluster ----------------------------------------------------------------
    def ds(self) -> Obj:
        return dict(self.cluster.kubectl_json("get", "daemonset", "agent", "-n", self.ns))

    def annotations(self) -> dict[str, str]:
        return dict(self.ds()["metadata"].get("annotations") or {})

    def pods(self) -> list[Obj]:
        items = self.cluster.kubectl_json("get", "pods", "-n", self.ns, "-l", "app=agent")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def newest_revision(self) -> str:
        items = self.cluster.kubectl_json("get", "controllerrevisions", "-n", self.ns)["items"]
        mine = [r for r in items if any(o.get("name") == "agent" for o in r["metadata"]["ownerReferences"])]
        return str(max(mine, key=lambda r: int(r["revision"]))["metadata"]["labels"][REVISION_LABEL])

    def events(self, reason: str) -> list[Obj]:
        items = self.cluster.kubectl_json("get", "events", "-n", self.ns)["items"]
        return [
            e
            for e in items
            if e.get("reason") == reason
            and e["involvedObject"].get("kind") == "DaemonSet"
            and e["involvedObject"].get("name") == "agent"
        ]

    def guard_events(self) -> list[Obj]:
        items = self.cluster.kubectl_json("get", "events", "-n", self.ns)["items"]
        return [e for e in items if e.get("reportingComponent") == "dsguard.io/guard"]

    def lease_holder(self) -> str:
        proc = self.kubectl("get", "lease", self.lease, "-n", LEASE_NAMESPACE, "-o", "json", check=False)
        return (
            str(json.loads(proc.stdout)["spec"].get("holderIdentity") or "") if proc.returncode == 0 else ""
        )

    # -- waiting ----------------------------------------------------------------------------
    def rolled_out(self, image: str, timeout: float = 60.0) -> str:
        """Until every node runs one available pod of the newest revision with `image`; its hash."""

        def done() -> str | None:
            ds = self.ds()
            st = ds.get("status", {})
            if st.get("observedGeneration") != ds["metadata"]["generation"]:
                return None
            if not (
                st.get("desiredNumberScheduled")
                == st.get("updatedNumberScheduled")
                == st.get("numberAvailable")
                == len(self.nodes)
            ):
                return None
            rev = self.newest_revision()
            pods = self.pods()
            ok = (
                len(pods) == len(self.nodes)
                and {p["spec"].get("nodeName") for p in pods} == set(self.nodes)
                and all(p["metadata"]["labels"].get(REVISION_LABEL) == rev for p in pods)
                and all(p["spec"]["containers"][0]["image"] == image for p in pods)
            )
            return rev if ok else None

        return poll(f"DaemonSet agent rolled out with {image} on {len(self.nodes)} nodes", done, timeout)

    def started_new_revision(self, old: str, timeout: float = 30.0) -> str:
        """Until a pod of a revision other than `old` exists (the rollout has begun); that revision."""

        def first() -> str | None:
            for p in self.pods():
                rev = p["metadata"]["labels"].get(REVISION_LABEL)
                if rev and rev != old:
                    return str(rev)
            return None

        return poll("the first pod of the new revision", first, timeout, interval=0.05)

    def annotated(self, key: str, what: str, timeout: float = 45.0) -> dict[str, str]:
        """Until the DaemonSet carries annotation `key`: its annotations."""

        def get() -> dict[str, str] | None:
            annotations = self.annotations()
            return annotations if key in annotations else None

        return poll(what, get, timeout, interval=0.1)

    def paused(self, timeout: float = 45.0) -> dict[str, str]:
        annotations = self.annotated("dsguard.io/paused", "the guard to pause the rollout", timeout)
        assert annotations["dsguard.io/paused"] == "true"
        return annotations

    def settled_on(self, revision: str) -> list[str]:
        """Once every node has a (not deleting) pod and the controller has seen the latest spec:
        the nodes whose pod is on `revision`."""

        def settled() -> list[str] | None:
            ds = self.ds()
            if ds.get("status", {}).get("observedGeneration") != ds["metadata"]["generation"]:
                return None
            pods = self.pods()
            if sorted(p["spec"].get("nodeName") or "" for p in pods) != sorted(self.nodes):
                return None
            return [
                p["spec"]["nodeName"] for p in pods if p["metadata"]["labels"][REVISION_LABEL] == revision
            ]

        return poll("every node to have a pod after the pause", lambda: settled() or None, 30)

    def cleanup(self) -> None:
        for w in self.watches:
            w.close()
        for g in self.guards:
            g.stop()
            # captured: pytest shows it only for a failed test
            print(f"--- guard {g.identity} log ({g.log_path}):\n{g.log_tail(60)}")
        for r in self.receivers:
            r.stop()
        self.kubectl("delete", "lease", self.lease, "-n", LEASE_NAMESPACE, "--ignore-not-found", check=False)
        # Three kubectl calls whatever the node count: no pod is left on a deleted node (kwok
        # stops playing those) to keep the namespace terminating.
        self.kubectl("delete", "daemonset", "agent", "-n", self.ns, "--ignore-not-found", check=False)
        force = ("--grace-period=0", "--force", "--wait=false")
        self.kubectl("delete", "pods", "-n", self.ns, "--all", *force, check=False)
        delete_nodes(self.cluster.kubectl, self.nodes, force_pods=False)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return write_tls_files(tmp_path_factory.mktemp("alert-tls"))


@pytest.fixture
def scenario(cluster: LocalCluster, namespace: str, tmp_path: Path, tls: TLSFiles) -> Iterator[Scenario]:
    s = Scenario(cluster, namespace, tmp_path, tls)
    try:
        yield s
    finally:
        s.cleanup()


def setup_rollout(s: Scenario, guards: list[HostGuard]) -> str:
    """Nodes, the DaemonSet fully rolled out on the good template, guards ready: the good revision."""
    s.add_nodes()
    s.apply(s.daemonset())
    good = s.rolled_out(GOOD_IMAGE)
    for g in guards:
        g.wait_ready()
    return good


def assert_signed_alert(s: Scenario, d: Delivery, *, kind: str, revision: str) -> dict[str, Any]:
    assert verify_signature(d.body, d.header(SIGNATURE_HEADER), s.hmac_key), "bad X-Dsguard-Signature"
    assert not verify_signature(d.body, d.header(SIGNATURE_HEADER), b"another key")
    assert d.header(EVENT_HEADER) == kind
    body: dict[str, Any] = json.loads(d.body)
    assert body["kind"] == kind
    assert body["daemonset"] == {"namespace": s.ns, "name": "agent", "uid": s.ds()["metadata"]["uid"]}
    assert body["revision"] == revision
    assert body["policy"] == f"guard-{s.ns}"
    assert len(body["failing"]) >= THRESHOLD
    return body


# --- the tests ----------------------------------------------------------------------------------


def test_good_rollout_completes_without_action_or_alert(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url))
    good = setup_rollout(s, [guard])

    fast = {POD_TIMING_ANNOTATIONS["start_delay"]: "100ms"}  # healthy, and quick to roll out
    s.apply(s.daemonset(image="registry.example.com/agent:1.1", annotations=fast))
    new = s.rolled_out("registry.example.com/agent:1.1")
    assert new != good
    # the guard has seen the finished rollout (and had every event of it to act on)
    poll(
        "the guard to see the rollout complete",
        lambda: guard.metric("dsguard_guard_rollouts_in_progress") == 0,
    )

    ds = s.ds()
    assert not [k for k in ds["metadata"].get("annotations") or {} if k.startswith("dsguard.io/")]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert s.guard_events() == []
    assert guard.metric("dsguard_guard_actions_total") == 0
    assert receiver.deliveries == []


def test_crashlooping_rollout_is_paused_early_with_an_event_and_one_signed_alert(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url))
    good = setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    annotations = s.paused()
    bad = s.newest_revision()
    assert bad != good

    on_bad = s.settled_on(bad)
    assert THRESHOLD <= len(on_bad) <= THRESHOLD + MAX_UNAVAILABLE, on_bad

    ds = s.ds()
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert set(PAUSE_ANNOTATIONS) <= set(annotations)
    assert annotations["dsguard.io/paused-revision"] == bad
    assert json.loads(annotations["dsguard.io/original-update-strategy"]) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": MAX_UNAVAILABLE, "maxSurge": 0},
    }
    reason = annotations["dsguard.io/pause-reason"]
    assert f"on revision {bad} failing (threshold {THRESHOLD})" in reason
    assert "CrashLoopBackOff" in reason or "restarted" in reason

    events = poll("the RolloutPaused Event", lambda: s.events("RolloutPaused"))
    delivery = poll("the alert at the receiver", lambda: receiver.accepted)[0]
    body = assert_signed_alert(s, delivery, kind="paused", revision=bad)
    assert {f["node"] for f in body["failing"]} <= set(on_bad)
    assert events[0]["type"] == "Warning" and events[0]["action"] == "Pause"
    assert bad in events[0]["message"]

    # nothing more happens: the rollout stays stopped, once
    poll(
        "the guard to count the failing pods", lambda: guard.metric("dsguard_guard_failing_pods") >= THRESHOLD
    )
    assert len(s.settled_on(bad)) == len(on_bad)
    assert len(s.events("RolloutPaused")) == 1
    assert len(receiver.deliveries) == 1
    assert guard.metric("dsguard_guard_actions_total", step="pause") == 1


def test_rollback_action_restores_the_previous_template_on_every_node(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(action="Rollback", alert_url=receiver.url))
    good = setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.started_new_revision(good)
    annotations = s.annotated("dsguard.io/rolled-back-revision", "the guard to roll back")
    assert annotations["dsguard.io/rolled-back-revision"] == bad
    assert annotations["dsguard.io/rolled-back-to"].startswith(f"{good} (revision 1)")
    assert "dsguard.io/paused" not in annotations

    # every pod back on the previous revision (the same ControllerRevision, now the newest)
    assert s.rolled_out(GOOD_IMAGE, timeout=90) == good
    ds = s.ds()
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD_IMAGE
    assert POD_BEHAVIOR_ANNOTATION not in (ds["spec"]["template"]["metadata"].get("annotations") or {})
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"

    events = poll("the RolloutRolledBack Event", lambda: s.events("RolloutRolledBack"))
    assert len(events) == 1 and events[0]["action"] == "Rollback"
    delivery = poll("the alert at the receiver", lambda: receiver.accepted)[0]
    assert_signed_alert(s, delivery, kind="rolled_back", revision=bad)
    assert len(receiver.deliveries) == 1
    assert guard.metric("dsguard_guard_actions_total", step="rollback") == 1


def test_node_going_not_ready_after_getting_the_new_pod_counts_as_failing(scenario: Scenario) -> None:
    s = scenario
    guard = s.guard(s.policy())
    good = setup_rollout(s, [guard])

    # a healthy template (slow to start, so the rollout is still going when the nodes fail)
    slow = {POD_TIMING_ANNOTATIONS["start_delay"]: "2s"}
    s.apply(s.daemonset(image="registry.example.com/agent:1.1", annotations=slow))
    new = s.started_new_revision(good)

    def ready_on_new() -> list[str] | None:
        nodes = [
            p["spec"]["nodeName"]
            for p in s.pods()
            if p["metadata"]["labels"].get(REVISION_LABEL) == new
            and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []
            )
        ]
        return sorted(nodes)[:THRESHOLD] if len(nodes) >= THRESHOLD else None

    victims = poll(f"{THRESHOLD} Ready pods of the new revision", ready_on_new, timeout=45, interval=0.1)
    assert not s.annotations().get("dsguard.io/paused")  # healthy so far: no pause
    s.kubectl(
        "annotate",
        "node",
        *victims,
        "--overwrite",
        f"dsguard.test/node-behavior={NodeBehavior.NOT_READY.value}",
    )

    annotations = s.paused()
    assert annotations["dsguard.io/paused-revision"] == new
    reason = annotations["dsguard.io/pause-reason"]
    assert f"failing (threshold {THRESHOLD}): {THRESHOLD} node NotReady; nodes: " in reason, reason
    for node in victims:
        assert node in reason
    events = poll("the RolloutPaused Event", lambda: s.events("RolloutPaused"))
    for node in victims:
        assert f"on {node} (node {node} NotReady since the new pod started)" in events[0]["message"]


def test_guard_killed_mid_rollout_and_restarted_pauses_exactly_once(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    guard = s.guard(s.policy(alert_url=receiver.url), lease_duration=3)
    good = setup_rollout(s, [guard])
    watch = s.watch()

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.started_new_revision(good)
    guard.kill()
    assert not s.annotations().get("dsguard.io/paused"), "paused before the kill: the test raced"
    # the same replica restarted (a container restart keeps POD_NAME, hence the identity)
    guard.start()
    annotations = s.paused()
    assert annotations["dsguard.io/paused-revision"] == bad
    poll("the RolloutPaused Event", lambda: s.events("RolloutPaused"))
    poll("the alert at the receiver", lambda: receiver.accepted)
    # Delivered alerts are taken off the DaemonSet's outbox; one killed before that is resent
    # (at least once), which is not what this test is about.
    poll("the delivered alert off the outbox", lambda: "dsguard.io/alerts-pending" not in s.annotations())

    # killed and restarted again, now after the pause: it must not pause or alert a second time
    guard.kill()
    guard.start()
    poll("the leader to be back", lambda: guard.metric("dsguard_guard_leader") == 1, timeout=30)
    poll("the restarted guard to evaluate", lambda: guard.metric("dsguard_guard_failing_pods") >= THRESHOLD)

    assert len(watch.pauses()) == 1, watch.pauses()
    assert watch.pauses()[0] == s.annotations()["dsguard.io/paused-at"]
    assert len(s.events("RolloutPaused")) == 1
    assert len(receiver.deliveries) == 1
    assert_signed_alert(s, receiver.deliveries[0], kind="paused", revision=bad)
    assert guard.metric("dsguard_guard_actions_total") == 0  # the last incarnation did nothing


def test_leader_failover_pauses_exactly_once(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver()
    policy = s.policy(alert_url=receiver.url)
    guards = [s.guard(policy, lease_duration=3), s.guard(policy, lease_duration=3)]
    good = setup_rollout(s, guards)
    by_id = {g.identity: g for g in guards}
    leader = by_id[poll("a leader", lambda: ((h := s.lease_holder()) in by_id and h) or None, timeout=30)]
    follower = next(g for g in guards if g is not leader)
    poll("the leader to know it", lambda: leader.metric("dsguard_guard_leader") == 1)
    assert follower.metric("dsguard_guard_leader") == 0
    watch = s.watch()

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    bad = s.started_new_revision(good)
    leader.kill()
    assert not s.annotations().get("dsguard.io/paused"), "paused before the kill: the test raced"

    annotations = s.paused()
    assert annotations["dsguard.io/paused-revision"] == bad
    assert s.lease_holder() == follower.identity
    events = poll("the RolloutPaused Event", lambda: s.events("RolloutPaused"))
    assert events[0]["reportingInstance"] == follower.identity
    delivery = poll("the alert at the receiver", lambda: receiver.accepted)[0]
    assert_signed_alert(s, delivery, kind="paused", revision=bad)
    poll(
        "the new leader to count the failing pods", lambda: follower.metric("dsguard_guard_failing_pods") >= 3
    )

    assert len(watch.pauses()) == 1, watch.pauses()
    assert len(s.events("RolloutPaused")) == 1
    assert len(receiver.deliveries) == 1
    assert follower.metric("dsguard_guard_actions_total", step="pause") == 1


def test_alert_sink_down_then_back_gets_the_alert_once(scenario: Scenario) -> None:
    s = scenario
    receiver = s.receiver(fail_first=1, start=False)  # nothing listens on its port yet
    guard = s.guard(s.policy(alert_url=receiver.url))
    setup_rollout(s, [guard])

    s.apply(s.daemonset(image=BAD_IMAGE, annotations=CRASHLOOP))
    annotations = s.paused()
    bad = annotations["dsguard.io/paused-revision"]
    # the Event sink is not held up by the webhook sink being down
    poll("the RolloutPaused Event", lambda: s.events("RolloutPaused"))
    poll(
        "a failed delivery to be retried",
        lambda: guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="retry") >= 1,
    )
    assert guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="delivered") == 0

    receiver.start()  # back, on the same port; it turns the first request away with a 503
    poll("the alert to be delivered", lambda: receiver.accepted, timeout=60)
    poll(
        "the guard to count the delivery",
        lambda: guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="delivered") == 1,
    )
    first, second = receiver.deliveries  # exactly: the 503 and the retry that got through
    assert (first.status, second.status) == (503, 200)
    assert first.header(DELIVERY_HEADER) and first.header(DELIVERY_HEADER) == second.header(DELIVERY_HEADER)
    assert first.body == second.body
    assert_signed_alert(s, second, kind="paused", revision=bad)
    assert guard.metric("dsguard_alert_deliveries_total", sink=SINK, result="failed") == 0
    assert len(s.events("RolloutPaused")) == 1
    assert s.events("AlertDeliveryFailed") == []
