"""`dsguard guard`: the rollout guard process. Wiring only: watches, leader election, alerts, HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dsguard.cluster_cache import ClusterCache
from dsguard.kube import Obj, Reflector, api_client, raw_body, slim_lists
from dsguard.lifecycle import cancel_and_wait, wait_for_shutdown_signal
from dsguard.pod_health import REVISION_LABEL, slim_node, slim_node_with_placement, slim_pod
from dsguard.policy import GuardPolicy, Policy
from guard.audit_loop import Auditor, KubeStatusWriter
from guard.controller import Guard, PatchBody
from guard.leader import LeaderElector
from guard.metrics import GuardMetrics
from guard.notify.alert import Alert
from guard.notify.dispatch import AlertDispatcher, delivery_counter
from guard.notify.events import EventRecorder
from guard.notify.sinks import KubeSecretReader, Sink, build_sinks
from guard.rollout import DaemonSetState

log = logging.getLogger("dsguard.guard")


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


class Notifier:
    """One dispatcher per distinct `alerts` list, each with the always-on Event sink first.

    `on_settled` and `will_resend` go to every dispatcher (Guard.alert_settled, Guard.will_resend:
    the pending alerts on the DaemonSets)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api: client.ApiClient,
        registry: Any,
        *,
        give_up_after: float = 1800.0,
        on_settled: Callable[[Alert], None] | None = None,
        will_resend: Callable[[Alert], bool] | None = None,
    ) -> None:
        self.session = session
        self.secrets = KubeSecretReader(api)
        self.recorder = EventRecorder.for_client(api)
        self.counter = delivery_counter(registry)
        self.give_up_after = give_up_after
        self.on_settled = on_settled
        self.will_resend = will_resend
        self._dispatchers: dict[tuple[Any, ...], AlertDispatcher] = {}

    def _dispatcher(self, guard: GuardPolicy) -> AlertDispatcher:
        key = guard.alerts
        found = self._dispatchers.get(key)
        if found is None:
            sinks: list[Sink] = [self.recorder, *build_sinks(guard.alerts, self.session, self.secrets)]
            found = AlertDispatcher(
                sinks,
                recorder=self.recorder,
                metrics=self.counter,
                give_up_after=self.give_up_after,
                on_settled=self.on_settled,
                will_resend=self.will_resend,
            )
            self._dispatchers[key] = found
        return found

    def __call__(self, alert: Alert, guard: GuardPolicy) -> None:
        dispatcher = self._dispatcher(guard)
        asyncio.get_running_loop().create_task(dispatcher.start())
        dispatcher.submit(alert)

    async def close(self, drain_timeout: float) -> None:
        for d in self._dispatchers.values():
            await d.close(drain_timeout)


def policies_matching(cache: ClusterCache) -> Any:
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
) -> None:
    api = await api_client(kubeconfig)
    metrics = GuardMetrics()
    cache = ClusterCache(static_policies=policies)
    session = aiohttp.ClientSession()
    guard: Guard
    notifier = Notifier(
        session,
        api,
        metrics.registry,
        on_settled=lambda alert: guard.alert_settled(alert),
        will_resend=lambda alert: guard.will_resend(alert),
    )
    guard = Guard(
        policies_for=policies_matching(cache),
        patcher=KubePatcher(api),
        notify=notifier,
        metrics=metrics,
        tick=tick,
    )
    # The audit writes DaemonSetPolicy status, so it needs the policies to come from the cluster.
    auditor = (
        Auditor(cache, KubeStatusWriter(api), notifier.recorder, metrics, is_leader=lambda: guard.is_leader(),
                resync=audit_resync)
        if audit and policies is None
        else None
    )  # fmt: skip

    def policies_changed() -> None:
        guard.mark_all()
        if auditor is not None:
            auditor.mark()

    cache.on_policies_changed = policies_changed
    restart = metrics.watch_restarts

    def replace_daemonsets(items: list[Obj]) -> None:
        guard.replace_daemonsets(items)
        if auditor is not None:
            auditor.replace_daemonsets(items)

    def daemonset_event(kind: str, obj: Obj) -> None:
        guard.daemonset_event(kind, obj)
        if auditor is not None:
            auditor.daemonset_event(kind, obj)

    def reflector(name: str, list_fn: Any, on_replace: Any, on_event: Any) -> Reflector:
        return Reflector(name, list_fn, on_replace=on_replace, on_event=on_event,
                         on_restart=lambda reason: restart.labels(name, reason).inc())  # fmt: skip

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    reflectors = [
        *cache.reflectors_for(api, nodes=False),
        reflector("daemonsets", apps.list_daemon_set_for_all_namespaces, replace_daemonsets, daemonset_event),
        reflector(
            "controllerrevisions",
            apps.list_controller_revision_for_all_namespaces,
            guard.replace_revisions,
            guard.revision_event,
        ),
        # One cluster-wide pod watch, narrowed to pods that carry a revision hash (DaemonSet and
        # StatefulSet pods); PodView drops the StatefulSet ones.
        reflector(
            "pods",
            slim_lists(
                functools.partial(core.list_pod_for_all_namespaces, label_selector=REVISION_LABEL), slim_pod
            ),
            guard.replace_pods,
            guard.pod_event,
        ),
    ]
    if auditor is None:
        nodes = reflector(
            "nodes", slim_lists(core.list_node, slim_node), guard.replace_nodes, guard.node_event
        )
    else:
        # One node watch for both: the rollout decisions read the Ready condition, the audit the
        # placement fields (labels, taints, kubelet version); each page is cut to those.
        def replace_nodes(items: list[Obj]) -> None:
            guard.replace_nodes(items)
            cache.replace_nodes(items)

        def node_event(kind: str, obj: Obj) -> None:
            guard.node_event(kind, obj)
            cache.node_event(kind, obj)

        nodes = reflector(
            "nodes", slim_lists(core.list_node, slim_node_with_placement), replace_nodes, node_event
        )
        cache.reflectors.append(nodes)  # the audit waits for it (cache.synced)
    reflectors.append(nodes)
    tasks = [asyncio.create_task(r.run(), name=f"watch-{r.name}") for r in reflectors]
    # Done once it has read the version: not one of the loops /healthz expects to run forever.
    one_shot: list[asyncio.Task[None]] = []
    if auditor is not None:
        one_shot.append(asyncio.create_task(cache.fetch_server_version(api), name="server-version"))
        tasks.append(asyncio.create_task(auditor.run(), name="audit"))
    else:
        log.info("background audit off (%s)", "--no-audit" if not audit else "policies from --policy-file")
    elector: LeaderElector | None = None

    def leadership_changed(leading: bool) -> None:
        metrics.leader.set(1 if leading else 0)
        guard.mark_all()  # a new leader decides for everything at once
        if auditor is not None:
            auditor.mark()

    if leader_election:
        elector = LeaderElector(
            api, namespace=lease_namespace, name=lease_name, identity=identity, lease_duration=lease_duration,
            renew_deadline=lease_duration * 2 / 3, retry=lease_duration / 7.5,
            on_change=leadership_changed,
        )  # fmt: skip
        guard.is_leader = elector.is_leader
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    else:
        metrics.leader.set(1)
    # pending alerts are resent once the policies (and the namespaces they match on) are known
    guard.ready = lambda: all(r.synced.is_set() for r in reflectors)
    tasks.append(asyncio.create_task(guard.run(), name="guard"))

    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        dead = [t.get_name() for t in tasks if t.done()]  # the loops: each runs until shutdown
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
        await runner.cleanup()
        await session.close()
        await api.close()


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
