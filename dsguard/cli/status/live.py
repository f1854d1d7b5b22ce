"""What `dsguard status --watch` reads, kept current by list+watch instead of read again.

A refresh of `dsguard status` lists Nodes, the DaemonSets' Pods and ControllerRevisions,
DaemonSets, Namespaces and DaemonSetPolicies. Every 2 s on a 5,000-node cluster that is tens of
megabytes a refresh for the apiserver to serialise; watching, it sends only what changed. Each
refresh then builds the report from memory (dsguard.status_report.build_report, as a one-shot
read does). Pages and Nodes are cut to what the report reads as they arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from kubernetes_asyncio import client

from dsguard.cluster_cache import ClusterCache
from dsguard.kube import Obj, Reflector, list_scoped, readyz_probe, slim_lists
from dsguard.pod_health import REVISION_LABEL, slim_node_with_placement, slim_pod
from dsguard.policy import Policy
from dsguard.status_report import StatusReport, build_report


class _Objects:
    """One resource's objects by namespace/name (what the slimmed pages keep), as a Reflector
    delivers them."""

    def __init__(self) -> None:
        self.items: dict[str, Obj] = {}

    @staticmethod
    def _key(obj: Mapping[str, object]) -> str:
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping):
            return ""
        return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"

    def replace(self, items: list[Obj]) -> None:
        self.items = {self._key(o): o for o in items}

    def event(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            self.items.pop(self._key(obj), None)
        else:
            self.items[self._key(obj)] = obj


class LiveStatus:
    def __init__(
        self, api: client.ApiClient, *, namespace: str | None, static_policies: tuple[Policy, ...] | None
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.static_policies = static_policies
        # Namespaces, policies (parsed; invalid ones in policy_errors) and the server version,
        # as the webhook keeps them; Nodes come through the watch below into it too.
        self.cache = ClusterCache(static_policies=static_policies)
        self.nodes, self.daemonsets, self.pods, self.revisions = (
            _Objects(),
            _Objects(),
            _Objects(),
            _Objects(),
        )
        ns = namespace
        pods = list_scoped(api, "pods", ns, label_selector=REVISION_LABEL)
        probe = readyz_probe(api)
        self.reflectors = [
            *self.cache.reflectors_for(api, nodes=False),
            Reflector(
                "nodes",
                slim_lists(list_scoped(api, "nodes", None), slim_node_with_placement),
                on_replace=self._replace_nodes,
                on_event=self._node_event,
                probe=probe,
            ),
            Reflector("daemonsets", list_scoped(api, "daemonsets", ns), on_replace=self.daemonsets.replace,
                      on_event=self.daemonsets.event, probe=probe),
            Reflector("pods", slim_lists(pods, slim_pod), on_replace=self.pods.replace,
                      on_event=self._pod_event, probe=probe),
            Reflector("controllerrevisions", list_scoped(api, "controllerrevisions", ns),
                      on_replace=self.revisions.replace, on_event=self.revisions.event, probe=probe),
        ]  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []

    def _replace_nodes(self, items: list[Obj]) -> None:
        self.nodes.replace(items)
        self.cache.replace_nodes(items)

    def _node_event(self, kind: str, obj: Obj) -> None:
        self.nodes.event(kind, slim_node_with_placement(obj))
        self.cache.node_event(kind, obj)

    def _pod_event(self, kind: str, obj: Obj) -> None:
        slim = slim_pod(obj)
        if slim is not None:  # None: no controller owns it
            self.pods.event(kind, slim)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(r.run(), name=f"status-watch-{r.name}") for r in self.reflectors]
        self._tasks.append(asyncio.create_task(self.cache.fetch_server_version(self.api)))

    async def synced(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not a cancel scope
        deadline = time.monotonic() + timeout
        while not self.cache.synced or not all(r.synced.is_set() for r in self.reflectors):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def stale(self, older_than: float) -> dict[str, float]:
        """Resources whose list/watch has been failing for more than `older_than` seconds, and
        for how long: the report shows what was last seen of them."""
        now = time.monotonic()
        return {
            r.name: now - r.failing_since
            for r in self.reflectors
            if r.failing_since is not None and now - r.failing_since > older_than
        }

    def report(self, *, name: str | None, now: float) -> StatusReport:
        return build_report(
            daemonsets=list(self.daemonsets.items.values()),
            pods=list(self.pods.items.values()),
            nodes=list(self.nodes.items.values()),
            revisions=list(self.revisions.items.values()),
            policies=self.cache.policies,
            facts=self.cache.facts,
            now=now,
            namespace=self.namespace,
            name=name,
            policy_errors=dict(self.cache.policy_errors),
            policy_source="files" if self.static_policies is not None else "cluster",
        )

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
