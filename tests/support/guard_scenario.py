"""The world of the guard's end-to-end tests (tests/cluster/test_guard_*.py, test_pause_hold_cluster.py):
one test's kwok nodes, DaemonSet `agent`, policy file, guard processes (localcluster.guard_host),
an HTTPS alert receiver, and a watch of every version of the DaemonSet.

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
import queue
import secrets
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web

from guard.notify.sinks import EVENT_HEADER, SIGNATURE_HEADER, verify_signature
from localcluster.cluster import LocalCluster
from localcluster.guard_host import LEASE_NAMESPACE, HostGuard
from localcluster.nodes import (
    POD_BEHAVIOR_ANNOTATION,
    POD_TIMING_ANNOTATIONS,
    PodBehavior,
    create_nodes,
    delete_nodes,
    node_manifest,
)
from localcluster.procs import free_port
from tests.support.builders import daemonset, policy
from tests.support.kubectl import Watch, apply
from tests.support.kwok import in_group
from tests.support.polling import poll
from tests.support.tls import TLSFiles

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

    It answers 503 to the first `fail_first` requests and 200 after that. Without `tls` it serves
    plain HTTP; `host` is the address it listens on and names in its URL (the host's address for
    pods on the real node, whose serving certificate must then name it).
    """

    def __init__(
        self, tls: TLSFiles | None, port: int | None = None, *, fail_first: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.tls = tls
        self.host = host
        self.port = port or free_port()
        self.fail_first = fail_first
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/alerts"

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
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        try:
            await web.TCPSite(runner, self.host, self.port, ssl_context=ctx).start()
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
    """`kubectl get daemonset --watch -o json`: every version the apiserver stored, in order."""

    def __init__(self, cluster: LocalCluster, namespace: str, name: str) -> None:
        self._watch = Watch(cluster, "daemonset", name, "-n", namespace)
        self._versions: list[Obj] = []

    @property
    def versions(self) -> list[Obj]:
        """Every version so far (those the watch has read)."""
        while True:
            try:
                obj = self._watch.events.get_nowait()
            except queue.Empty:
                return list(self._versions)
            if obj is not None:
                self._versions.append(obj)

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
        self._watch.close()


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
        create_nodes(self.cluster.kubectl, [node_manifest(n, labels=in_group(self.ns)) for n in names])
        return names

    def hmac_secret(self) -> dict[str, str]:
        """A Secret holding a random HMAC key; returns its reference for the policy."""
        self.hmac_key = secrets.token_bytes(32)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "alert-hmac", "namespace": self.ns},
            "data": {"key": base64.b64encode(self.hmac_key).decode()},
        }
        apply(self.cluster, secret)
        return {"namespace": self.ns, "name": "alert-hmac", "key": "key"}

    def policy(self, *, action: str = "Pause", alert_url: str | None = None) -> Path:
        guard: dict[str, Any] = {"failureThreshold": THRESHOLD, "action": action}
        if alert_url is not None:
            guard["alerts"] = [{"type": "Webhook", "url": alert_url, "hmacSecretRef": self.hmac_secret()}]
        doc = policy(f"guard-{self.ns}", {"guard": guard}, namespaces=[self.ns])
        path = self.tmp_path / f"policy-{action.lower()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def receiver(self, port: int | None = None, *, fail_first: int = 0, start: bool = True) -> AlertReceiver:
        r = AlertReceiver(self.tls, port, fail_first=fail_first)
        self.receivers.append(r)
        return r.start() if start else r

    def guard(
        self, policy: Path, *, start: bool = True, extra_args: Sequence[str] = (), **kwargs: Any
    ) -> HostGuard:
        """A guard process (not waited for: call wait_ready()); it trusts the receiver's private
        CA beside the system's (--extra-ca-file), as the chart's guard.extraCACertificates does."""
        g = HostGuard(
            self.cluster,
            policy_files=[policy],
            extra_args=["--extra-ca-file", str(self.tls.ca_file), *extra_args],
            lease_name=self.lease,
            **{**GUARD_FLAGS, **kwargs},
        )
        self.guards.append(g)
        return g.start(wait=False) if start else g

    def daemonset(self, image: str = GOOD_IMAGE, annotations: Mapping[str, str] | None = None) -> Obj:
        return daemonset(
            "agent", self.ns, image=image, node_selector=in_group(self.ns), max_unavailable=MAX_UNAVAILABLE,
            template_annotations=annotations or {},
        )  # fmt: skip

    def apply(self, obj: Obj) -> None:
        apply(self.cluster, obj)

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

        return poll(
            done, what=f"DaemonSet agent rolled out with {image} on {len(self.nodes)} nodes", timeout=timeout
        )

    def started_new_revision(self, old: str, timeout: float = 30.0) -> str:
        """Until a pod of a revision other than `old` exists (the rollout has begun); that revision."""

        def first() -> str | None:
            for p in self.pods():
                rev = p["metadata"]["labels"].get(REVISION_LABEL)
                if rev and rev != old:
                    return str(rev)
            return None

        return poll(first, what="the first pod of the new revision", timeout=timeout, interval=0.05)

    def annotated(self, key: str, what: str, timeout: float = 45.0) -> dict[str, str]:
        """Until the DaemonSet carries annotation `key`: its annotations."""

        def get() -> dict[str, str] | None:
            annotations = self.annotations()
            return annotations if key in annotations else None

        return poll(get, what=what, timeout=timeout, interval=0.1)

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

        return poll(lambda: settled() or None, what="every node to have a pod after the pause", timeout=30)

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
