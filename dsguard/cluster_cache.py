"""A watched view of the cluster: Nodes, Namespaces, DaemonSetPolicies, the server version.

The webhook reads all of it; the guard reads the policies and namespaces.

Reviews read `facts` and `policies`, never the API. Node heartbeats (status updates every few
seconds on every node) don't touch the fields rules read, so they don't rebuild the snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client

from dsguard import policy as policy_model
from dsguard.facts import ClusterFacts
from dsguard.fielderrors import InvalidSpec
from dsguard.kube import Obj, Reflector, name_of, readyz_probe
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo

log = logging.getLogger("dsguard.cache")


class ClusterCache:
    def __init__(
        self,
        *,
        static_policies: Sequence[Policy] | None = None,
        on_policies_changed: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_policies_changed()`: called after the policies in force (or their errors) changed."""
        self._nodes: dict[str, NodeInfo] = {}
        self._namespaces: dict[str, Mapping[str, str]] = {}
        self._policies: dict[str, Policy] = {}
        self._static = tuple(static_policies) if static_policies is not None else None
        self._server_version: str | None = None
        self._facts: ClusterFacts | None = None
        # The same tuple until a node changes: the rules' placement memo is keyed on it, so a
        # snapshot rebuilt for a namespace change keeps every walk.
        self._node_tuple: tuple[NodeInfo, ...] | None = None
        self._policy_list: tuple[Policy, ...] | None = None
        self.policy_errors: dict[str, str] = {}  # policy name -> why it (or its latest change) was rejected
        # policy name -> (metadata.generation, status) as stored: the audit writes status from these
        self.policy_meta: dict[str, tuple[int, Mapping[str, Any]]] = {}
        self.reflectors: list[Reflector] = []
        self._await_nodes = False  # synced waits for a node list from a watch it shares (reflectors_for)
        self._nodes_listed = False
        self.on_restart: Callable[[str, str], None] = lambda resource, reason: None
        self.on_policies_changed = on_policies_changed

    # -- snapshots read by the reviews -------------------------------------------------------
    @property
    def facts(self) -> ClusterFacts:
        if self._facts is None:
            if self._node_tuple is None:
                self._node_tuple = tuple(self._nodes[n] for n in sorted(self._nodes))
            self._facts = ClusterFacts(
                nodes=self._node_tuple,
                namespaces=dict(self._namespaces),
                server_version=self._server_version,
            )
        return self._facts

    @property
    def policies(self) -> tuple[Policy, ...]:
        if self._static is not None:
            return self._static
        if self._policy_list is None:
            self._policy_list = tuple(self._policies[n] for n in sorted(self._policies))
        return self._policy_list

    @property
    def synced(self) -> bool:
        return (
            all(r.synced.is_set() for r in self.reflectors)
            and self._server_version is not None
            and (self._nodes_listed or not self._await_nodes)
        )

    def use_static_facts(self, nodes: Sequence[NodeInfo], server_version: str) -> None:
        """Serve fixed nodes with no watch (offline runs, benchmarks)."""
        self._nodes = {n.name: n for n in nodes}
        self._server_version = server_version
        self._facts = self._node_tuple = None

    # -- nodes -------------------------------------------------------------------------------
    def replace_nodes(self, items: list[Obj]) -> None:
        self._nodes = {n.name: n for n in map(NodeInfo.from_node, items)}
        self._facts = self._node_tuple = None
        self._nodes_listed = True

    def node_event(self, kind: str, obj: Obj) -> None:
        name = name_of(obj)
        if kind == "DELETED":
            if self._nodes.pop(name, None) is not None:
                self._facts = self._node_tuple = None
            return
        info = NodeInfo.from_node(obj)
        if self._nodes.get(name) != info:
            self._nodes[name] = info
            self._facts = self._node_tuple = None

    # -- namespaces --------------------------------------------------------------------------
    def replace_namespaces(self, items: list[Obj]) -> None:
        self._namespaces = {name_of(o): _labels(o) for o in items}
        self._facts = None

    def namespace_event(self, kind: str, obj: Obj) -> None:
        name = name_of(obj)
        if kind == "DELETED":
            self._namespaces.pop(name, None)
        elif self._namespaces.get(name) == _labels(obj):
            return
        else:
            self._namespaces[name] = _labels(obj)
        self._facts = None

    # -- policies ----------------------------------------------------------------------------
    def replace_policies(self, items: list[Obj]) -> None:
        previous = self._policies
        self._policies = {}
        self.policy_errors = {}
        self.policy_meta = {}
        for obj in items:
            self._accept_policy(obj, previous)
        self._policy_list = None
        self.on_policies_changed()

    def policy_event(self, kind: str, obj: Obj) -> None:
        name = name_of(obj)
        before = (self._policies.get(name), self.policy_errors.get(name))
        if kind == "DELETED":
            self._policies.pop(name, None)
            self.policy_errors.pop(name, None)
            self.policy_meta.pop(name, None)
        else:
            self._accept_policy(obj, self._policies)
        if (self._policies.get(name), self.policy_errors.get(name)) == before and kind != "DELETED":
            return  # a status write (the audit's own) or metadata: nothing the rules read changed
        self._policy_list = None
        self.on_policies_changed()

    def _accept_policy(self, obj: Obj, previous: Mapping[str, Policy]) -> None:
        name = name_of(obj)
        meta = obj.get("metadata") or {}
        status = obj.get("status")
        self.policy_meta[name] = (
            int(meta.get("generation") or 0),
            status if isinstance(status, dict) else {},
        )
        try:
            self._policies[name] = policy_model.parse_policy(obj, source=f"DaemonSetPolicy/{name}")
            self.policy_errors.pop(name, None)
        except InvalidSpec as e:
            # Keep enforcing the last good version rather than silently dropping the guardrail.
            repeated = self.policy_errors.get(name) == str(e)  # e.g. the audit wrote its status
            self.policy_errors[name] = str(e)
            if name in previous:
                self._policies[name] = previous[name]
            if not repeated:
                why = (
                    "still enforcing its previous valid version"
                    if name in previous
                    else "not enforced until fixed"
                )
                log.error("%s; %s", e, why)

    # -- running -----------------------------------------------------------------------------
    def reflectors_for(
        self, api: client.ApiClient, *, nodes: bool = True, shared_nodes: bool = False
    ) -> list[Reflector]:
        """The watches that feed this cache; `synced` waits for them. `nodes`: a node watch of its
        own. `shared_nodes` (with nodes=False): the caller runs a node watch that feeds this cache
        too (replace_nodes, node_event), and `synced` waits for its first list as well."""
        if nodes and shared_nodes:
            raise ValueError("nodes=True is a node watch of its own: not shared_nodes as well")
        self._await_nodes = shared_nodes
        core = client.CoreV1Api(api)
        probe = readyz_probe(api)
        self.reflectors = []
        if nodes:
            self.reflectors.append(
                Reflector(
                    "nodes",
                    core.list_node,
                    on_replace=self.replace_nodes,
                    on_event=self.node_event,
                    on_restart=lambda r: self.on_restart("nodes", r),
                    probe=probe,
                )
            )
        self.reflectors += [
            Reflector(
                "namespaces",
                core.list_namespace,
                on_replace=self.replace_namespaces,
                on_event=self.namespace_event,
                on_restart=lambda r: self.on_restart("namespaces", r),
                probe=probe,
            ),
        ]
        if self._static is None:
            custom = client.CustomObjectsApi(api)

            def list_policies(**kwargs: Any) -> Any:
                return custom.list_cluster_custom_object(
                    policy_model.GROUP, policy_model.VERSION, policy_model.PLURAL, **kwargs
                )

            self.reflectors.append(
                Reflector(
                    "daemonsetpolicies",
                    list_policies,
                    on_replace=self.replace_policies,
                    on_event=self.policy_event,
                    on_restart=lambda r: self.on_restart("daemonsetpolicies", r),
                    probe=probe,
                )
            )
        return self.reflectors

    async def fetch_server_version(self, api: client.ApiClient) -> None:
        backoff = 0.5
        while self._server_version is None:
            try:
                info = await client.VersionApi(api).get_code()
                self._server_version = str(info.git_version)
                self._facts = None
            except Exception as e:
                log.warning("reading the apiserver version failed (%s); retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = obj.get("metadata") or {}
    return dict(meta.get("labels") or {})
