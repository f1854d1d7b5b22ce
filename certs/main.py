"""`dsguard certs run` and `dsguard certs inject` against a cluster: wiring only (an API client, a
KubeStore, and bootstrap's loop, one planned round or one injection).

An unusable kubeconfig raises dsguard.kube.ClientConfigError before anything is read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from certs.bootstrap import KubeStore, inject, observe, run
from certs.rotate import ConfigRef, Plan, Settings, plan
from dsguard.kube import api_client


async def run_certs(settings: Settings, *, kubeconfig: str | None, interval: float, once: bool) -> int:
    """The loop (bootstrap.run): forever, or with once until up to date (0) or an error (1)."""
    api = await api_client(kubeconfig)
    try:
        return await run(KubeStore(api), settings, interval=interval, once=once)
    finally:
        await api.close()


async def preview(settings: Settings, *, kubeconfig: str | None) -> Plan:
    """What one round would write now (--dry-run); writes nothing. StoreError when reading fails."""
    api = await api_client(kubeconfig)
    try:
        store = KubeStore(api)
        return plan(await observe(store, settings), settings, dt.datetime.now(dt.UTC))
    finally:
        await api.close()


async def inject_bundle(refs: Sequence[ConfigRef], pem: bytes, *, kubeconfig: str | None) -> list[str]:
    """bootstrap.inject, once: one line per configuration; StoreError naming a missing one."""
    api = await api_client(kubeconfig)
    try:
        return await inject(KubeStore(api), refs, pem, now=dt.datetime.now(dt.UTC))
    finally:
        await api.close()
