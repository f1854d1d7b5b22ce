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
from dsguard.kube import ListFn, Obj, list_all, name_of
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
    """Reading the cluster failed; the message says what was read and why it failed."""


# Per request: a blackholed apiserver fails the command instead of hanging it.
REQUEST_TIMEOUT = 60.0


async def _read(what: str, call: ListFn) -> list[Obj]:
    try:
        items, _ = await list_all(call, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        hint = " (does your user have RBAC to list it?)" if e.status in (401, 403) else ""
        if e.status == 404 and what == "daemonsetpolicies":
            hint = (
                " (is the DaemonSetPolicy CRD installed? `kubectl apply -k manifests/base`, "
                "or give the policies with --policy-file)"
            )
        raise SnapshotError(f"listing {what} failed: {e.status} {e.reason}{hint}") from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise SnapshotError(
            f"listing {what} failed: {type(e).__name__}: {e or 'no answer in time'}"
        ) from None
    return items


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
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    p = functools.partial
    ds_call = (
        p(apps.list_daemon_set_for_all_namespaces)
        if namespace is None
        else p(apps.list_namespaced_daemon_set, namespace)
    )
    policy_call = p(
        custom.list_cluster_custom_object, policy_model.GROUP, policy_model.VERSION, policy_model.PLURAL
    )
    try:
        version = await client.VersionApi(api).get_code(_request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        raise SnapshotError(f"reading the apiserver version failed: {e.status} {e.reason}") from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise SnapshotError(f"cannot reach the apiserver: {e or 'no answer in time'}") from None
    nodes_raw, namespaces_raw, ds_raw, policies_raw = await asyncio.gather(
        _read("nodes", p(core.list_node)) if static_nodes is None else _empty(),
        _read("namespaces", p(core.list_namespace)),
        _read("daemonsets", ds_call) if read_daemonsets else _empty(),
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
