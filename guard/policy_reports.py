"""Policy reports, the edges: keep one report per namespace in the cluster in step with the audit.

The audit hands over what it judged, DaemonSet by DaemonSet (`judged`), then asks for the reports
to be brought up to date (`sync`, with the DaemonSets that exist). Only namespaces whose results
changed are written, by server-side apply (field manager `dsguard-guard`, forced: the report is
dsguard's alone); a namespace without governed DaemonSets loses its report. The stored reports
are listed once per leadership, so a restarted guard neither rewrites identical reports nor
forgets one it left behind. The report body is dsguard/policy_reports.py.

A failed call is retried with the audit's backoff (sync returns False). Without the report CRD in
the cluster (neither Kyverno nor the report API installed) the guard says so once and looks again
at the next audit; the audit itself carries on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dsguard.kube import raw_body
from dsguard.policy import Policy
from dsguard.policy_reports import (
    MANAGED_BY,
    REPORT_NAME,
    ReportFormat,
    RuleResult,
    build_report,
    daemonset_results,
    report_changed,
)
from dsguard.rules.context import Finding
from guard.metrics import GuardMetrics

log = logging.getLogger("dsguard.reports")

FIELD_MANAGER = "dsguard-guard"
Obj = dict[str, Any]


class ReportStore(Protocol):
    async def list(self) -> list[Obj]: ...
    async def apply(self, namespace: str, body: Mapping[str, Any]) -> None: ...
    async def delete(self, namespace: str, name: str) -> None: ...


class KubeReportStore:
    """The reports of one format, through the custom objects API."""

    def __init__(self, api: client.ApiClient, fmt: ReportFormat) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.fmt = fmt

    async def list(self) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        body = await raw_body(
            self.custom.list_cluster_custom_object(
                self.fmt.group, self.fmt.version, self.fmt.plural, label_selector=selector,
                _preload_content=False,
            )
        )  # fmt: skip
        items: list[Obj] = orjson.loads(body).get("items") or []
        return items

    async def apply(self, namespace: str, body: Mapping[str, Any]) -> None:
        await raw_body(
            self.custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                self.fmt.group, self.fmt.version, namespace, self.fmt.plural, REPORT_NAME, dict(body),
                field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml", _preload_content=False,
            )
        )  # fmt: skip

    async def delete(self, namespace: str, name: str) -> None:
        await raw_body(
            self.custom.delete_namespaced_custom_object(
                self.fmt.group, self.fmt.version, namespace, self.fmt.plural, name, _preload_content=False
            )
        )


def _namespace(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


class PolicyReportWriter:
    def __init__(
        self,
        fmt: ReportFormat,
        store: ReportStore,
        metrics: GuardMetrics,
        *,
        max_results: int,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.fmt = fmt
        self.store = store
        self.metrics = metrics
        self.max_results = max_results
        self.now = now
        self._results: dict[tuple[str, str], list[RuleResult]] = {}
        self._dirty: set[str] = set()  # namespaces whose results changed since the last sync
        self._stored: dict[str, Obj] | None = None  # namespace -> report; None: list first
        self._missing_said = False
        self._crd_gone = False  # a write found no such resource: list again before the next one

    # -- what the audit judged -----------------------------------------------------------------
    def judged(self, obj: Mapping[str, Any], by_policy: Sequence[tuple[Policy, Sequence[Finding]]]) -> None:
        """One DaemonSet's findings (none when no policy governs it) from the latest audit."""
        results = daemonset_results(obj, by_policy)
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        if self._results.get(key, []) != results:
            self._dirty.add(key[0])
        if results:
            self._results[key] = results
        else:
            self._results.pop(key, None)

    def relist(self) -> None:
        """Read the stored reports again before the next write (a new leader)."""
        self._stored = None

    # -- writing -------------------------------------------------------------------------------
    async def sync(self, present: Collection[tuple[str, str]]) -> bool:
        """Bring the reports up to date; `present`: (namespace, name) of the DaemonSets that exist.
        False when a call failed and should be retried soon (the CRD missing is not such a case:
        the next audit looks again)."""
        for key in [k for k in self._results if k not in present]:
            self._dirty.add(key[0])
            del self._results[key]
        if self._stored is None:
            try:
                stored = await self.store.list()
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as e:
                self._failed("listing", e)
                return isinstance(e, ApiException) and e.status == 404
            ours = [r for r in stored if (r.get("metadata") or {}).get("name") == REPORT_NAME]
            self._stored = {_namespace(r): r for r in ours}
            # Compare every stored report and every namespace with results once.
            self._dirty |= set(self._stored) | {namespace for namespace, _ in self._results}
            if self._missing_said:
                log.info("%s: the %s CRD is there now; writing reports", self.fmt.kind, self.fmt.resource)
                self._missing_said = False
        by_namespace: dict[str, list[RuleResult]] = {}
        for (namespace, _), found in self._results.items():
            if namespace in self._dirty:
                by_namespace.setdefault(namespace, []).extend(found)
        now = self.now()
        retry: set[str] = set()
        for namespace in sorted(self._dirty):
            previous = self._stored.get(namespace)
            results = by_namespace.get(namespace)
            if not results:
                if previous is not None and await self._delete(namespace):
                    del self._stored[namespace]
                elif previous is not None:
                    retry.add(namespace)
                continue
            body = build_report(
                self.fmt, namespace, results, previous=previous, now=now, max_results=self.max_results
            )
            if not report_changed(body, previous):
                continue
            if await self._apply(namespace, body):
                self._stored[namespace] = body
            else:
                retry.add(namespace)
        self._dirty = retry
        if self._crd_gone:
            self._crd_gone = False
            self.relist()
        return not retry

    async def _apply(self, namespace: str, body: Mapping[str, Any]) -> bool:
        try:
            await self.store.apply(namespace, body)
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as e:
            self.metrics.report_writes.labels("apply", "error").inc()
            if isinstance(e, ApiException) and e.status == 404:
                self._crd_gone = True  # the next audit lists again, and says so once
            self._failed(f"writing {self.fmt.kind} {namespace}/{REPORT_NAME}", e)
            return False
        self.metrics.report_writes.labels("apply", "ok").inc()
        return True

    async def _delete(self, namespace: str) -> bool:
        try:
            await self.store.delete(namespace, REPORT_NAME)
        except ApiException as e:
            if e.status != 404:  # already gone (with its namespace, or by hand)
                self.metrics.report_writes.labels("delete", "error").inc()
                self._failed(f"deleting {self.fmt.kind} {namespace}/{REPORT_NAME}", e)
                return False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.metrics.report_writes.labels("delete", "error").inc()
            self._failed(f"deleting {self.fmt.kind} {namespace}/{REPORT_NAME}", e)
            return False
        self.metrics.report_writes.labels("delete", "ok").inc()
        return True

    def _failed(self, what: str, e: Exception) -> None:
        if isinstance(e, ApiException) and e.status == 404 and what == "listing":
            self._stored = None
            if not self._missing_said:
                log.warning(
                    "policy reports: the %s CRD is not installed, so no %s is written; install it "
                    "(the OpenReports or policy WG report API, or a Kyverno that ships it) or run the "
                    "guard with --policy-reports none",
                    self.fmt.resource, self.fmt.kind,
                )  # fmt: skip
                self._missing_said = True
            return
        if isinstance(e, ApiException):
            hint = (
                f" (the guard needs list, create, patch and delete on {self.fmt.resource})"
                if e.status == 403
                else ""
            )
            log.error("policy reports: %s failed: HTTP %s %s%s", what, e.status, e.reason, hint)
        else:
            log.error("policy reports: %s failed: %s: %s", what, type(e).__name__, e)
