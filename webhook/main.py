"""`dsguard webhook`: the admission webhook process. Wiring only: the TLS context and its reloader,
the watched cluster cache (or fixed facts), the HTTPS server.

Start-up inputs are checked before anything is served: a bad certificate or key file raises
tls.ServingFileError, an unusable kubeconfig dsguard.kube.ClientConfigError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dsguard.cluster_cache import ClusterCache
from dsguard.kube import api_client
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo
from webhook.connections import ConnectionLimits, raise_open_files_limit
from webhook.server import WebhookState, run
from webhook.tls import CertReloader, checked_server_context


async def run_webhook(
    *,
    tls_cert_file: str,
    tls_private_key_file: str,
    host: str,
    port: int,
    kubeconfig: str | None,
    policies: Sequence[Policy] | None,
    nodes: Sequence[NodeInfo] | None = None,
    kubernetes_version: str | None = None,
    exempt_users: frozenset[str] = frozenset(),
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT. policies=None watches the cluster's DaemonSetPolicies; nodes
    (with policies) serves fixed facts and contacts no cluster."""
    ctx = checked_server_context(tls_cert_file, tls_private_key_file)
    limits = limits or ConnectionLimits()
    raise_open_files_limit(limits)
    cache = ClusterCache(static_policies=policies)
    tasks: list[asyncio.Task[None]] = []
    api = None
    if nodes is not None:
        cache.use_static_facts(nodes, kubernetes_version or "")
    else:
        api = await api_client(kubeconfig)
        for reflector in cache.reflectors_for(api):
            tasks.append(asyncio.create_task(reflector.run(), name=f"watch-{reflector.name}"))
        tasks.append(asyncio.create_task(cache.fetch_server_version(api), name="server-version"))
    try:
        await run(
            WebhookState(cache=cache, exempt_users=exempt_users, limits=limits),
            ssl_context=ctx,
            reloader=CertReloader(ctx, tls_cert_file, tls_private_key_file),
            host=host,
            port=port,
            tasks=tasks,
        )
    finally:
        if api is not None:
            await api.close()
