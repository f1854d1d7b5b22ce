"""Fakes and builders for the guard's unit tests: DaemonSet, revision and pod objects, a fake
apiserver that answers the guard's patches, and a Harness wiring a Guard with its Outbox.

FakeApiserver applies merge patches the way the apiserver does for the fields the guard writes
(annotations, updateStrategy), enforces the resourceVersion precondition (409 on a stale one),
applies JSON patches (422 when a `test` op fails, as the apiserver answers) and bumps
resourceVersion/generation, so each test can hand the patched object back to the guard as the
watch would.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import ALERTS_PENDING
from dsguard.policy import GuardPolicy, Match, Policy
from guard import actions
from guard.controller import Guard
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert, AlertKind, FailingPod
from guard.outbox import Outbox
from guard.store import Dirty

T0 = 1_800_000_000.0
POLICY = Policy(name="agents", match=Match(), guard=GuardPolicy(failure_threshold=2))
STRATEGY = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 0}}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ds_obj(uid: str = "uid-1", name: str = "agent") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name, "namespace": "ns", "uid": uid, "resourceVersion": "10", "generation": 2,
            "annotations": {},
        },
        "spec": {"updateStrategy": copy.deepcopy(STRATEGY), "template": {"spec": {"containers": []}}},
        "status": {
            "observedGeneration": 2, "desiredNumberScheduled": 5, "updatedNumberScheduled": 2,
            "numberAvailable": 3, "numberReady": 3,
        },
    }  # fmt: skip


def revision_obj(hash_: str, number: int, uid: str = "uid-1", name: str = "agent") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-{hash_}",
            "namespace": "ns",
            "labels": {"controller-revision-hash": hash_},
            "ownerReferences": [{"kind": "DaemonSet", "uid": uid, "controller": True}],
        },
        "revision": number,
        "data": {"spec": {"template": {"spec": {"containers": []}, "$patch": "replace"}}},
    }


def pod_obj(name: str, hash_: str, *, crashing: bool, uid: str = "uid-1") -> dict[str, Any]:
    state = {"waiting": {"reason": "CrashLoopBackOff"}} if crashing else {"running": {}}
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"controller-revision-hash": hash_},
            "creationTimestamp": iso(T0 - 60),
            "ownerReferences": [{"kind": "DaemonSet", "uid": uid, "controller": True}],
        },
        "spec": {"nodeName": f"node-{name}"},
        "status": {
            "phase": "Running",
            "startTime": iso(T0 - 59),
            "conditions": [{"type": "Ready", "status": "False" if crashing else "True"}],
            "containerStatuses": [{"name": "c", "restartCount": 1, "state": state}],
        },
    }


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    """RFC 6902 on objects (test, add, replace, remove): the patched copy; 422 as the apiserver
    answers when an op fails."""
    out = copy.deepcopy(target)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (op["op"] != "add" and last not in node):
            raise ApiException(status=422, reason=f"{op['op']}: no {op['path']}")
        if op["op"] == "test" and node[last] != op["value"]:
            raise ApiException(status=422, reason=f"test failed on {op['path']}")
        if op["op"] in ("add", "replace"):
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[last]
    return out


class FakeApiserver:
    """DaemonSets by name; patch() as the apiserver would answer the guard's patches."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {o["metadata"]["name"]: copy.deepcopy(o) for o in objs}
        self.patches: list[Any] = []
        self.content_types: list[str] = []
        self.fail_with: int | None = None  # answer the next patch with this status

    async def patch(self, namespace: str, name: str, body: Any, content_type: str) -> None:
        self.patches.append(copy.deepcopy(body if content_type == actions.JSON_PATCH else dict(body)))
        self.content_types.append(content_type)
        if self.fail_with is not None:
            status, self.fail_with = self.fail_with, None
            raise ApiException(status=status, reason="fake")
        obj = self.objs[name]
        if content_type == actions.JSON_PATCH:
            self.objs[name] = json_patch(obj, body)
            self.bump(name)
            return
        want = body.get("metadata", {}).get("resourceVersion")
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        patch = copy.deepcopy(dict(body))
        patch.get("metadata", {}).pop("resourceVersion", None)
        merge(obj, patch)
        self.bump(name, spec="spec" in patch)

    def bump(self, name: str, *, spec: bool = False) -> dict[str, Any]:
        """A new version (a status write by the DaemonSet controller when spec is False)."""
        meta = self.objs[name]["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        if spec:
            meta["generation"] += 1
            self.objs[name]["status"]["observedGeneration"] = meta["generation"]
        return copy.deepcopy(self.objs[name])

    def get(self, name: str = "agent") -> dict[str, Any]:
        return copy.deepcopy(self.objs[name])


class FakePods:
    """The guard's PodDeleter: records what it deleted (namespace, name, uid)."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str, str]] = []

    async def delete(self, namespace: str, name: str, uid: str) -> bool:
        self.deleted.append((namespace, name, uid))
        return True


class FakePatcher:
    def __init__(self, patch: Any) -> None:
        self.patch = patch


class Harness:
    """A Guard wired as guard.main wires it (an Outbox, the marks they share), against the fake
    apiserver: `leading` and `listed` are what is_leader() and ready() answer."""

    def __init__(self, *objs: dict[str, Any], policies: list[Policy] | None = None) -> None:
        self.api = FakeApiserver(*(objs or (ds_obj(),)))
        self.alerts: list[Alert] = []
        self.sent_with: list[GuardPolicy] = []  # the policy each alert went out under
        self.notified = asyncio.Event()  # set at every alert
        self.metrics = GuardMetrics()
        self.policies = [POLICY] if policies is None else policies
        self.now = T0
        self.mono: float | None = None  # a fake monotonic clock once set; the real one before
        self.leading = True  # is_leader()
        self.listed = True  # ready(): the policies (and the namespaces they match on) are known
        self.current = True  # current(): every watch listed since its last failure

        def monotonic() -> float:
            return time.monotonic() if self.mono is None else self.mono

        def notify(alert: Alert, guard: GuardPolicy) -> None:
            self.alerts.append(alert)
            self.sent_with.append(guard)
            self.notified.set()

        self.dirty = Dirty()
        self.pods = FakePods()
        self.outbox = Outbox(
            patcher=self.api, mark=self.dirty.mark, metrics=self.metrics, monotonic=monotonic
        )
        self.guard = Guard(
            policies_for=lambda ds: self.policies,
            patcher=self.api,
            outbox=self.outbox,
            notify=notify,
            dirty=self.dirty,
            is_leader=lambda: self.leading,
            ready=lambda: self.listed,
            current=lambda: self.current,
            metrics=self.metrics,
            clock=lambda: self.now,
            monotonic=monotonic,
            pods=self.pods,
        )
        self.store = self.guard.store
        # every watch has listed: the DaemonSets as the fake apiserver has them, nothing else yet
        self.store.replace_daemonsets([copy.deepcopy(o) for o in self.api.objs.values()])
        self.store.replace_revisions([])
        self.store.replace_pods([])
        self.store.replace_nodes([])

    def advance(self, seconds: float) -> None:
        """Move the fake monotonic clock on (starting it at 1000 s)."""
        self.mono = (1000.0 if self.mono is None else self.mono) + seconds

    def rollout(self, failing: int, *, uid: str = "uid-1", name: str = "agent", bad: str = "bad") -> None:
        """Revisions good (1) and bad (2); `failing` crash-looping pods of 3 on bad."""
        self.store.revision_event("ADDED", revision_obj("good", 1, uid, name))
        self.store.revision_event("ADDED", revision_obj(bad, 2, uid, name))
        for i in range(3):
            self.store.pod_event("ADDED", pod_obj(f"{name}-{i}", bad, crashing=i < failing, uid=uid))

    def watch(self, name: str = "agent") -> None:
        """The watch delivers the current version."""
        self.store.daemonset_event("MODIFIED", self.api.get(name))

    async def process(self) -> None:
        await self.guard.process(set(self.store.daemonsets))

    def gauge(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        assert value is not None
        return value


def pending(h: Harness, name: str = "agent") -> list[dict[str, Any]]:
    """The DaemonSet's pending alerts as the fake apiserver has them."""
    raw = h.api.get(name)["metadata"].get("annotations", {}).get(ALERTS_PENDING)
    return [] if raw is None else list(json.loads(raw))


def foreign_alert(uid: str = "uid-1", kind: AlertKind = AlertKind.PAUSED, revision: str = "bad") -> Alert:
    """An alert another guard wrote (and was killed before it was delivered)."""
    return Alert(
        kind=kind,
        namespace="ns",
        daemonset="agent",
        uid=uid,
        revision=revision,
        summary="paused the rollout: 2 of 3 pods failing",
        failing=(FailingPod("agent-0", "node-agent-0", "CrashLoopBackOff"),),
        policy="agents",
        at=datetime(2027, 1, 15, 8, 0, 0, 123456, tzinfo=UTC),
    )


def ds_with_pending(*entries: Any, raw: str | None = None) -> dict[str, Any]:
    """A DaemonSet whose pending alerts are `entries` (or the value `raw`)."""
    obj = ds_obj()
    obj["metadata"]["annotations"][ALERTS_PENDING] = raw if raw is not None else json.dumps(list(entries))
    return obj
