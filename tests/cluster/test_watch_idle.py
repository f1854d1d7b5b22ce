"""A watch whose connection goes silent (no FIN, no RST: a peer gone, a dropped NAT entry) is
found dead by its idle timeout and opened again, so the view catches up in seconds, not at the
watch's end (timeoutSeconds 300 + 30). The real apiserver, through a TCP proxy the test silences."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from dsguard.kube import Reflector, api_client
from localcluster.cluster import LocalCluster
from tests.support.tcp_proxy import TcpProxy, kubeconfig_through

IDLE = 3.0  # the product's default is 150 s (the apiserver's first bookmark comes at ~120 s)


async def test_a_silent_watch_is_opened_again_and_the_view_catches_up(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)  # by ConfigMap name
    restarts: list[str] = []

    def on_replace(items: list[Any]) -> None:
        for item in items:
            arrived[item["metadata"]["name"]].set()

    def on_event(kind: str, obj: Any) -> None:
        if kind != "DELETED":
            arrived[obj["metadata"]["name"]].set()

    async def seen(name: str, within: float) -> None:
        try:
            await asyncio.wait_for(arrived[name].wait(), within)
        except TimeoutError:
            raise AssertionError(f"ConfigMap {name} not seen by the reflector within {within:g}s") from None

    def create(name: str) -> None:
        cluster.kubectl("create", "configmap", name, "-n", namespace)

    with TcpProxy(cluster.ports.apiserver) as proxy:
        via = kubeconfig_through(proxy, cluster.kubeconfig, tmp_path / "via-proxy.kubeconfig")
        api = await api_client(str(via))
        list_fn = functools.partial(client.CoreV1Api(api).list_namespaced_config_map, namespace)
        r = Reflector("configmaps", list_fn, on_replace=on_replace, on_event=on_event,
                      idle_timeout=IDLE, on_restart=restarts.append)  # fmt: skip
        task = asyncio.create_task(r.run())
        try:
            await asyncio.wait_for(r.synced.wait(), timeout=30)
            await asyncio.to_thread(create, "before")
            await seen("before", 30)

            proxy.silence_open()  # the watch's connection (and any pooled one) goes silent
            await asyncio.to_thread(create, "after")
            # Within a few idle timeouts; without one, not before the watch's 330 s end.
            await seen("after", 10 * IDLE)
            assert "idle" in restarts, restarts
            assert r.staleness() == 0.0  # current again
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await api.close()
