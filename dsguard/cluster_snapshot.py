"""One read of what the one-shot commands (`status`, `upgrade-check`) judge: DaemonSets, Nodes,
Namespaces, DaemonSetPolicies and the apiserver version, as the rules' ClusterFacts.

The long-running processes keep the same view current with watches (ClusterCache); a command
reads it once, in pages, as raw JSON.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard import policy as policy_model
from dsguard.facts import ClusterFacts
from dsguard.fielderrors import InvalidSpec
from dsguard.kube import REQUEST_TIMEOUT, ListError, ListFn, Obj, list_explained, list_scoped, name_of
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo


@dataclass(frozen=True)
class ClusterSnapshot:
    facts: ClusterFacts
    policies: tuple[Policy, ...]
    daemonsets: tuple[Obj, ...]
    policy_errors: Mapping[str, str] = field(default_factory=dict)  # policy name -> why it was rejected
    policy_objects: Mapping[str, Obj] = field(default_factory=dict)  # as read, status included


class SnapshotError(Exception):
    """Reading the cluster failed; the message says what was read and why it failed.
    `unreachable`: the apiserver didn't answer (refused, reset, timed out)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


_CRD_MISSING = (
    "is the DaemonSetPolicy CRD installed? `kubectl apply -k manifests/base`, "
    "or give the policies with --policy-file"
)


async def _read(what: str, call: ListFn) -> list[Obj]:
    try:
        hints = {404: _CRD_MISSING} if what == "daemonsetpolicies" else None
        return await list_explained(what, call, hints=hints)
    except ListError as e:
        raise SnapshotError(str(e), unreachable=e.unreachable) from None


async def read_snapshot(
    api: client.ApiClient,
    *,
    namespace: str | None,
    static_policies: Sequence[Policy] | None = None,
    static_nodes: Sequence[NodeInfo] | None = None,
    read_daemonsets: bool = True,
) -> ClusterSnapshot:
    """namespace=None reads DaemonSets in every namespace. Policies that don't parse are left
    out and reported in policy_errors, as the webhook and the guard leave them out."""
    policy_call = functools.partial(
        client.CustomObjectsApi(api).list_cluster_custom_object,
        policy_model.GROUP,
        policy_model.VERSION,
        policy_model.PLURAL,
    )
    try:
        version = await client.VersionApi(api).get_code(_request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        raise SnapshotError(f"reading the apiserver version failed: {e.status} {e.reason}") from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise SnapshotError(
            f"cannot reach the apiserver: {e or 'no answer in time'}", unreachable=True
        ) from None
    nodes_raw, namespaces_raw, ds_raw, policies_raw = await asyncio.gather(
        _read("nodes", list_scoped(api, "nodes", None)) if static_nodes is None else _empty(),
        _read("namespaces", list_scoped(api, "namespaces", None)),
        _read("daemonsets", list_scoped(api, "daemonsets", namespace)) if read_daemonsets else _empty(),
        _read("daemonsetpolicies", policy_call) if static_policies is None else _empty(),
    )
    nodes = tuple(static_nodes) if static_nodes is not None else tuple(map(NodeInfo.from_node, nodes_raw))
    policies: list[Policy] = list(static_policies or ())
    errors: dict[str, str] = {}
    for obj in policies_raw:
        name = name_of(obj)
        try:
            policies.append(policy_model.parse_policy(obj, source=f"DaemonSetPolicy/{name}"))
        except InvalidSpec as e:
            errors[name] = str(e)
    facts = ClusterFacts(
        nodes=tuple(sorted(nodes, key=lambda n: n.name)),
        namespaces={name_of(o): dict((o.get("metadata") or {}).get("labels") or {}) for o in namespaces_raw},
        server_version=str(version.git_version),
    )
    return ClusterSnapshot(
        facts=facts,
        policies=tuple(sorted(policies, key=lambda x: x.name)),
        daemonsets=tuple(ds_raw),
        policy_errors=errors,
        policy_objects={name_of(o): o for o in policies_raw},
    )


async def _empty() -> list[Obj]:
    return []
