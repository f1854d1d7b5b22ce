"""`dsguard resume` and `dsguard rollback`: the same patches the guard uses, by hand."""

from __future__ import annotations

from typing import Any

import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.kube import api_client, raw_body
from dsguard.revisions import Revision, previous_revision, update_revision
from guard import actions
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
        strategy = patch["spec"]["updateStrategy"]
        return f"daemonset.apps/{name} resumed (updateStrategy {orjson.dumps(strategy).decode()})"
    finally:
        await api.close()


async def rollback_daemonset(namespace: str, name: str, *, kubeconfig: str | None = None) -> str:
    api = await api_client(kubeconfig)
    try:
        apps = client.AppsV1Api(api)
        obj = await _load(apps, namespace, name)
        ds = DaemonSetState.from_object(obj)
        try:
            listed = await _get_json(
                apps.list_namespaced_controller_revision(namespace, _preload_content=False)
            )
        except ApiException as e:
            raise ValueError(
                f"listing the ControllerRevisions in {namespace}: HTTP {e.status} {_message(e)}"
            ) from None
        revisions = [
            r
            for r in (Revision.from_object(item) for item in listed.get("items", []))
            if r and r.owner_uid == ds.uid
        ]
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
