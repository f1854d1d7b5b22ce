"""One refresh of `dsguard status`: Nodes, the DaemonSets' pods and ControllerRevisions here,
DaemonSets, Namespaces and DaemonSetPolicies through dsguard.cluster_snapshot, into the pure
dsguard.status_report."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from kubernetes_asyncio import client

from dsguard.cli import exits
from dsguard.kube import ListError, list_explained, list_scoped
from dsguard.pod_health import REVISION_LABEL
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo
from dsguard.status_report import StatusReport, build_report


class StatusError(exits.BadInput):
    """Reading the cluster failed, or it has nothing to show: one line saying why and how to fix
    it; exit 2 when it happens at the first read (a later refresh is retried, loop.py)."""


@dataclass(frozen=True)
class Target:
    namespace: str | None  # None: every namespace
    name: str | None
    static_policies: tuple[Policy, ...] | None  # --policy-file


async def read_report(api: client.ApiClient, target: Target) -> StatusReport:
    """One refresh: everything the report needs, read now."""
    # Imported here: the snapshot module pulls in the Kubernetes client models, slow to import,
    # and `dsguard status --help` or a usage error needn't wait for them.
    from dsguard.cluster_snapshot import SnapshotError, read_snapshot

    ns = target.namespace
    try:
        nodes = await list_explained("nodes", list_scoped(api, "nodes", None))
        pods, revisions = await asyncio.gather(
            # Only pods a controller labels with its revision (DaemonSets' and StatefulSets').
            list_explained("pods", list_scoped(api, "pods", ns, label_selector=REVISION_LABEL)),
            list_explained("controllerrevisions", list_scoped(api, "controllerrevisions", ns)),
        )
        snapshot = await read_snapshot(
            api,
            namespace=ns,
            static_policies=target.static_policies,
            static_nodes=[NodeInfo.from_node(n) for n in nodes],
        )
    except ListError as e:
        if e.unreachable:
            raise StatusError(
                f"cannot reach the apiserver at {api.configuration.host}: {e}", fix=exits.FIX_UNREACHABLE
            ) from None
        raise StatusError(str(e)) from None
    except SnapshotError as e:
        raise StatusError(str(e), fix=exits.FIX_UNREACHABLE if e.unreachable else None) from None
    return build_report(
        daemonsets=snapshot.daemonsets,
        pods=pods,
        nodes=nodes,
        revisions=revisions,
        policies=snapshot.policies,
        facts=snapshot.facts,
        now=time.time(),
        namespace=ns,
        name=target.name,
        policy_errors=snapshot.policy_errors,
        policy_source="files" if target.static_policies is not None else "cluster",
    )


async def api_for(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    from dsguard.kube import ClientConfigError, api_client

    try:
        return await api_client(kubeconfig, context)
    except ClientConfigError as e:
        raise exits.bad_kubeconfig(e, context_flag=True) from None


def not_found(target: Target) -> StatusError:
    where = f"namespace {target.namespace}" if target.namespace else "any namespace"
    return StatusError(
        f'DaemonSet "{target.name}" not found in {where} '
        "(check the name and -n NAMESPACE, or use -A to look in every namespace)"
    )
