"""`dsguard resume`, `rollback`, `pause` and `promote`: the same patches the guard uses, by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.annotations import PAUSE_REASON, wave_info, waves_in_progress
from dsguard.kube import api_client, raw_body
from dsguard.revisions import Revision, previous_revision, update_revision
from guard import actions, wave_actions
from guard.main import KubePatcher
from guard.rollout import DaemonSetState


async def _get_json(call: Any) -> Any:
    return orjson.loads(await raw_body(call))  # ApiException on a non-2xx status


async def _load(apps: client.AppsV1Api, namespace: str, name: str) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = await _get_json(
            apps.read_namespaced_daemon_set(name, namespace, _preload_content=False)
        )
    except ApiException as e:
        if e.status == 404:
            raise ValueError(f"DaemonSet {namespace}/{name} not found") from None
        raise ValueError(f"reading DaemonSet {namespace}/{name}: HTTP {e.status} {e.reason}") from None
    return obj


async def resume_daemonset(namespace: str, name: str, *, kubeconfig: str | None = None) -> str:
    api = await api_client(kubeconfig)
    try:
        apps = client.AppsV1Api(api)
        ds = DaemonSetState.from_object(await _load(apps, namespace, name))
        patch = actions.resume_patch(ds)  # ResumeError (a ValueError) names what is wrong
        try:
            await KubePatcher(api).patch(namespace, name, patch, actions.MERGE_PATCH)
        except ApiException as e:
            raise ValueError(
                f"resuming DaemonSet {namespace}/{name}: HTTP {e.status} {_message(e)}"
            ) from None
        if "spec" not in patch:
            info = wave_info(ds.annotations)
            wave = f" at wave {info.index + 1}" if info is not None else ""
            return f"daemonset.apps/{name} resumed: the guard continues the wave rollout{wave}"
        strategy = patch["spec"]["updateStrategy"]
        return f"daemonset.apps/{name} resumed (updateStrategy {orjson.dumps(strategy).decode()})"
    finally:
        await api.close()


async def _revisions(apps: client.AppsV1Api, ds: DaemonSetState) -> list[Revision]:
    try:
        listed = await _get_json(
            apps.list_namespaced_controller_revision(ds.namespace, _preload_content=False)
        )
    except ApiException as e:
        raise ValueError(
            f"listing the ControllerRevisions in {ds.namespace}: HTTP {e.status} {_message(e)}"
        ) from None
    return [
        r
        for r in (Revision.from_object(item) for item in listed.get("items", []))
        if r and r.owner_uid == ds.uid
    ]


async def pause_daemonset(
    namespace: str, name: str, *, reason: str = "", kubeconfig: str | None = None, now: float | None = None
) -> str:
    """What `kubectl rollout pause` can't do for a DaemonSet: OnDelete, recorded the guard's way
    (the webhook holds it against re-applies; `dsguard resume` lifts it)."""
    api = await api_client(kubeconfig)
    try:
        apps = client.AppsV1Api(api)
        ds = DaemonSetState.from_object(await _load(apps, namespace, name))
        if ds.paused:
            return f"daemonset.apps/{name} already paused ({ds.annotations.get(PAUSE_REASON, '')})"
        current = update_revision(await _revisions(apps, ds))
        at = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        why = reason or "paused by hand with dsguard pause"
        patch = actions.pause_patch(ds, current.hash if current else "", why, at)
        try:
            await KubePatcher(api).patch(namespace, name, patch, actions.MERGE_PATCH)
        except ApiException as e:
            raise ValueError(f"pausing DaemonSet {namespace}/{name}: HTTP {e.status} {_message(e)}") from None
        return f"daemonset.apps/{name} paused (resume with: dsguard resume {namespace}/{name})"
    finally:
        await api.close()


async def promote_daemonset(namespace: str, name: str, *, kubeconfig: str | None = None) -> str:
    """Approve the next wave of a wave rollout (or end the current bake early)."""
    api = await api_client(kubeconfig)
    try:
        apps = client.AppsV1Api(api)
        ds = DaemonSetState.from_object(await _load(apps, namespace, name))
        info = wave_info(ds.annotations)
        if info is None or not waves_in_progress(ds.annotations):
            raise ValueError(
                f"DaemonSet {namespace}/{name} has no wave rollout in progress; nothing to promote"
            )
        if ds.paused:
            raise ValueError(
                f"DaemonSet {namespace}/{name} is paused ({ds.annotations.get(PAUSE_REASON, '')}); "
                f"resume it first: dsguard resume {namespace}/{name}"
            )
        wave = info.index + 1
        if info.promoted is not None and info.promoted >= wave:
            return f"daemonset.apps/{name} wave {wave + 1} already promoted"
        try:
            await KubePatcher(api).patch(
                namespace, name, wave_actions.promote_patch(ds, wave), actions.MERGE_PATCH
            )
        except ApiException as e:
            raise ValueError(
                f"promoting DaemonSet {namespace}/{name}: HTTP {e.status} {_message(e)}"
            ) from None
        return f"daemonset.apps/{name} promoted: wave {wave + 1} may start"
    finally:
        await api.close()


async def rollback_daemonset(namespace: str, name: str, *, kubeconfig: str | None = None) -> str:
    api = await api_client(kubeconfig)
    try:
        apps = client.AppsV1Api(api)
        obj = await _load(apps, namespace, name)
        ds = DaemonSetState.from_object(obj)
        revisions = await _revisions(apps, ds)
        current, previous = update_revision(revisions), previous_revision(revisions)
        if current is None or previous is None:
            raise ValueError(f"DaemonSet {namespace}/{name} has no previous revision to roll back to")
        if actions.template_matches(ds, previous):
            return (
                f"daemonset.apps/{name} skipped rollback (the template is already revision {previous.number})"
            )
        patch = actions.rollback_patch(ds, current.hash, previous, "manual rollback with dsguard rollback")
        try:
            await KubePatcher(api).patch(namespace, name, patch, actions.STRATEGIC_MERGE_PATCH)
        except ApiException as e:
            raise ValueError(
                f"rolling back DaemonSet {namespace}/{name}: HTTP {e.status} {_message(e)}"
            ) from None
        return f"daemonset.apps/{name} rolled back to revision {previous.number} ({previous.hash})"
    finally:
        await api.close()


def _message(e: ApiException) -> str:
    try:
        return str(orjson.loads(e.body or b"{}").get("message") or e.reason)
    except orjson.JSONDecodeError:
        return str(e.reason)
