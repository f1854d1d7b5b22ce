"""`dsguard guard`: the rollout guard process. Wiring only: watches, leader election, alerts, HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from dsguard.cluster_cache import ClusterCache
from dsguard.kube import Reflector, Subscriber, api_client, raw_body, readyz_probe, slim_lists
from dsguard.lifecycle import cancel_and_wait, wait_for_shutdown_signal
from dsguard.pod_health import REVISION_LABEL, slim_node_with_placement, slim_pod
from dsguard.policy import Policy
from dsguard.policy_reports import FORMATS, MAX_RESULTS
from guard.actions import PatchBody
from guard.audit_loop import Auditor, KubeStatusWriter
from guard.controller import Guard, PolicyLookup
from guard.gate_probes import ApiserverSampler, Probes, PrometheusProber
from guard.leader import LeaderElector
from guard.metrics import GuardMetrics
from guard.notify.events import EventRecorder
from guard.notify.notifier import Notifier
from guard.notify.sinks import KubeSecretReader
from guard.outbound_tls import outbound_ssl_context
from guard.outbox import Outbox
from guard.policy_reports import KubeReportStore, PolicyReportWriter
from guard.rollout import DaemonSetState
from guard.store import Dirty, Store

log = logging.getLogger("dsguard.guard")


def _always() -> bool:
    return True


class KubePatcher:
    def __init__(self, api: client.ApiClient) -> None:
        self.apps = client.AppsV1Api(api)

    async def patch(self, namespace: str, name: str, body: PatchBody, content_type: str) -> None:
        # _content_type picks the patch flavour (merge, strategic, JSON patch); the generated stubs
        # don't declare it. Raw response: no model building, but the status must be checked by us
        # (raw_body).
        payload: Any = dict(body) if isinstance(body, Mapping) else [dict(op) for op in body]
        await raw_body(
            self.apps.patch_namespaced_daemon_set(  # type: ignore[call-arg]
                name, namespace, payload, _content_type=content_type, _preload_content=False
            )
        )


class KubePodDeleter:
    """Deletes one old pod of a wave rollout, by uid: never its replacement, never twice."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)

    async def delete(self, namespace: str, name: str, uid: str) -> bool:
        try:
            await raw_body(
                self.core.delete_namespaced_pod(
                    name,
                    namespace,
                    body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)),
                    _preload_content=False,
                )
            )
        except client.ApiException as e:
            if e.status in (404, 409):  # gone, or already another pod of that name (its replacement)
                return False
            raise
        return True


def policies_matching(cache: ClusterCache) -> PolicyLookup:
    def lookup(ds: DaemonSetState) -> list[Policy]:
        ns_labels = cache.facts.namespace_labels(ds.namespace)
        return [
            p
            for p in cache.policies
            if p.match.matches(namespace=ds.namespace, namespace_labels=ns_labels, labels=ds.labels)
        ]

    return lookup


async def run_guard(
    *,
    kubeconfig: str | None,
    policies: Sequence[Policy] | None,
    lease_namespace: str,
    lease_name: str,
    identity: str,
    host: str,
    port: int,
    tick: float,
    leader_election: bool,
    lease_duration: float,
    audit: bool = True,
    audit_resync: float = 300.0,
    gate_sample_interval: float = 5.0,
    policy_reports: str = "openreports",
    report_max_results: int = MAX_RESULTS,
    outbound_tls: ssl.SSLContext | None = None,
) -> None:
    api = await api_client(kubeconfig)
    metrics = GuardMetrics()
    if outbound_tls is None:  # alert sinks and Prometheus gates: the system's CAs
        outbound_tls = outbound_ssl_context()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=outbound_tls))
    patcher = KubePatcher(api)
    # The audit writes DaemonSetPolicy status, so it needs the policies to come from the cluster.
    auditing = audit and policies is None
    # What wakes the loops: the DaemonSets the guard decides for again, the audit's wake-up.
    dirty = Dirty()
    audit_wake = asyncio.Event()

    def policies_changed() -> None:
        dirty.mark_all()
        audit_wake.set()

    def leadership_changed(leading: bool) -> None:
        metrics.leader.set(1 if leading else 0)
        dirty.mark_all()  # a new leader decides for everything at once
        audit_wake.set()

    cache = ClusterCache(static_policies=policies, on_policies_changed=policies_changed)
    elector = (
        LeaderElector(
            api, namespace=lease_namespace, name=lease_name, identity=identity, lease_duration=lease_duration,
            renew_deadline=lease_duration * 2 / 3, retry=lease_duration / 7.5, on_change=leadership_changed,
        )
        if leader_election
        else None
    )  # fmt: skip
    is_leader = elector.is_leader if elector is not None else _always
    if elector is None:
        metrics.leader.set(1)

    # The watches the policy lookup reads (namespaces, and the policies unless from files): the
    # guard resends pending alerts once they (and its own) have listed. With the audit, the guard's
    # node watch (below) feeds the cache too, and cache.synced waits for it.
    cache_reflectors = cache.reflectors_for(api, nodes=False, shared_nodes=auditing)

    def policies_known() -> bool:
        return all(r.synced.is_set() for r in cache_reflectors)

    def watches_current() -> bool:  # every watch (`reflectors`, below) listed since its last failure
        return all(r.failing_since is None for r in reflectors)

    outbox = Outbox(patcher=patcher, mark=dirty.mark, metrics=metrics)
    recorder = EventRecorder.for_client(api)
    # Wave rollouts' apiserver gate: sample the request counter while a policy asks for it, so a
    # baseline exists when a rollout starts.
    sampler = ApiserverSampler(
        api,
        wanted=lambda: any(p.guard and p.guard.gates and p.guard.gates.apiserver for p in cache.policies),
        interval=gate_sample_interval,
        rates=metrics.apiserver_rate,
    )
    prober = PrometheusProber(ssl_context=outbound_tls)

    async def record_event(ds: DaemonSetState, reason: str, message: str, warning: bool) -> None:
        await recorder.record(
            namespace=ds.namespace, name=ds.name, uid=ds.uid, reason=reason, action="Rollout",
            message=message, warning=warning,
        )  # fmt: skip

    notifier = Notifier(
        session, secrets=KubeSecretReader(api), recorder=recorder, registry=metrics.registry, pending=outbox
    )
    guard = Guard(
        policies_for=policies_matching(cache),
        patcher=patcher,
        outbox=outbox,
        notify=notifier,
        dirty=dirty,
        is_leader=is_leader,
        ready=policies_known,
        current=watches_current,
        metrics=metrics,
        tick=tick,
        pods=KubePodDeleter(api),
        gates=Probes(sampler, prober),
        record_event=record_event,
    )
    fmt = FORMATS.get(policy_reports)  # None: --policy-reports none
    reports = (
        PolicyReportWriter(fmt, KubeReportStore(api, fmt), metrics, max_results=report_max_results)
        if fmt is not None and auditing
        else None
    )
    auditor = (
        Auditor(cache, KubeStatusWriter(api), recorder, metrics, is_leader=is_leader, wake=audit_wake,
                resync=audit_resync, reports=reports)
        if auditing
        else None
    )  # fmt: skip

    reflectors = [
        *cache_reflectors,
        *guard_watches(api, guard.store, cache=cache, auditor=auditor, restarts=metrics.watch_restarts),
    ]
    for r in reflectors:
        metrics.watch_staleness.labels(r.name).set_function(r.staleness)
    # The cache's watches (namespaces, policies) restart and relist like the guard's own.
    cache.on_restart = lambda resource, reason: metrics.watch_restarts.labels(resource, reason).inc()
    metrics.watch_lists.source = lambda: {r.name: r.lists for r in reflectors}
    tasks = [asyncio.create_task(r.run(), name=f"watch-{r.name}") for r in reflectors]
    # Done once it has read the version: not one of the loops /healthz expects to run forever.
    one_shot: list[asyncio.Task[None]] = []
    if auditor is not None:
        one_shot.append(asyncio.create_task(cache.fetch_server_version(api), name="server-version"))
        tasks.append(asyncio.create_task(auditor.run(), name="audit"))
    else:
        log.info("background audit off (%s)", "--no-audit" if not audit else "policies from --policy-file")
    if elector is not None:
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    tasks.append(asyncio.create_task(guard.run(), name="guard"))
    tasks.append(asyncio.create_task(sampler.run(), name="apiserver-gate-sampler"))

    app = health_app(tasks, reflectors, metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("guard %s serving /healthz /readyz /metrics on http://%s:%d", identity, host, port)

    try:
        await wait_for_shutdown_signal()
    finally:
        log.info("shutting down")
        if elector is not None:
            await elector.release()
        await cancel_and_wait([*tasks, *one_shot])
        await notifier.close(drain_timeout=10.0)
        await prober.close()
        await runner.cleanup()
        await session.close()
        await api.close()


def guard_watches(
    api: client.ApiClient,
    store: Store,
    *,
    cache: ClusterCache,
    auditor: Auditor | None,
    restarts: Counter,
) -> list[Reflector]:
    """The guard's own watches: DaemonSets, ControllerRevisions, pods and nodes, feeding its store
    and, with the audit, the auditor (DaemonSets) and the cache (nodes)."""

    probe = readyz_probe(api)

    def reflector(name: str, list_fn: Any, *subscribers: Subscriber) -> Reflector:
        return Reflector(name, list_fn, subscribers=subscribers, probe=probe,
                         on_restart=lambda reason: restarts.labels(name, reason).inc())  # fmt: skip

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    daemonsets = reflector(
        "daemonsets",
        apps.list_daemon_set_for_all_namespaces,
        Subscriber(store.replace_daemonsets, store.daemonset_event),
        *([Subscriber(auditor.replace_daemonsets, auditor.daemonset_event)] if auditor else []),
    )
    revisions = reflector(
        "controllerrevisions",
        apps.list_controller_revision_for_all_namespaces,
        Subscriber(store.replace_revisions, store.revision_event),
    )
    # One cluster-wide pod watch, narrowed to pods that carry a revision hash (DaemonSet and
    # StatefulSet pods); PodView drops the StatefulSet ones.
    pods = reflector(
        "pods",
        slim_lists(
            functools.partial(core.list_pod_for_all_namespaces, label_selector=REVISION_LABEL), slim_pod
        ),
        Subscriber(store.replace_pods, store.pod_event),
    )
    # One node watch: the rollout decisions read the Ready condition, the wave plans and the audit
    # the placement fields (labels, taints, kubelet version); each page is cut to those.
    nodes = reflector(
        "nodes",
        slim_lists(core.list_node, slim_node_with_placement),
        Subscriber(store.replace_nodes, store.node_event),
        *([Subscriber(cache.replace_nodes, cache.node_event)] if auditor else []),
    )
    return [daemonsets, revisions, pods, nodes]


def health_app(
    tasks: Sequence[asyncio.Task[None]], reflectors: Sequence[Reflector], metrics: GuardMetrics
) -> web.Application:
    """/healthz: 500 once one of `tasks` (loops that run until shutdown) has stopped; /readyz:
    503 until every watch has listed; /metrics."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        dead = [t.get_name() for t in tasks if t.done()]
        return web.Response(status=500, text=f"stopped: {dead}") if dead else web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        pending = [r.name for r in reflectors if not r.synced.is_set()]
        return (
            web.Response(status=503, text=f"waiting for: {pending}") if pending else web.Response(text="ok")
        )

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
