"""The refresh loop of `dsguard status`: once, --watch (read once, then watch: live.py), and
--until-done's verdict."""

from __future__ import annotations

import asyncio
import time

from kubernetes_asyncio import client

from dsguard.cli import exits
from dsguard.cli.status.live import LiveStatus
from dsguard.cli.status.read import StatusError, Target, api_for, not_found, read_report
from dsguard.cli.status.render import Printer
from dsguard.status_report import Outcome, Rollout, StatusReport


def _verdict(report: StatusReport) -> str:
    bad = [d for d in report.daemonsets if d.rollout in (Rollout.PAUSED, Rollout.ROLLED_BACK)]
    parts = []
    for d in bad:
        if d.rollout is Rollout.PAUSED and d.paused is not None:
            parts.append(f"DaemonSet {d.ref} paused by dsguard since {d.paused.since}: {d.paused.reason}")
        elif d.rolled_back is not None:
            parts.append(
                f"DaemonSet {d.ref} rolled back by dsguard to {d.rolled_back.to}: {d.rolled_back.reason}"
            )
    return "; ".join(parts)


def _progress(report: StatusReport) -> str:
    waiting = [d for d in report.daemonsets if d.rollout is not Rollout.COMPLETE]
    return "; ".join(
        f"{d.ref}: {d.updated}/{d.desired} updated, {d.available}/{d.desired} available"
        + ("" if d.generation_observed else ", generation not yet observed")
        for d in waiting
    )


async def run(
    target: Target,
    *,
    kubeconfig: str | None,
    context: str | None,
    printer: Printer,
    watch: bool,
    until_done: bool,
    interval: float,
    give_up_after: float | None,
) -> int:
    api = await api_for(kubeconfig, context)
    last: list[StatusReport] = []
    try:
        with printer:
            loop = _loop(
                api, target, printer, watch=watch, until_done=until_done, interval=interval, last=last
            )
            if give_up_after is None:
                return await loop
            try:
                return await asyncio.wait_for(loop, give_up_after)
            except TimeoutError:
                progress = _progress(last[-1]) if last else "no status read yet"
                printer.note(
                    f"timed out after {give_up_after:g}s waiting for the rollouts: {progress}", "red"
                )
                return exits.PROBLEM
    finally:
        await api.close()


async def _loop(
    api: client.ApiClient,
    target: Target,
    printer: Printer,
    *,
    watch: bool,
    until_done: bool,
    interval: float,
    last: list[StatusReport],
) -> int:
    live: LiveStatus | None = None
    tried_live = False
    was_stale = False
    try:
        while True:
            started = time.monotonic()
            stale: dict[str, float] = {}
            try:
                if live is not None:
                    report = live.report(name=target.name, now=time.time())  # from memory
                    stale = live.stale(older_than=max(3 * interval, 5.0))
                    if bool(stale) != was_stale:
                        was_stale = bool(stale)
                        if stale:
                            what = ", ".join(f"{n} for {age:.0f}s" for n, age in sorted(stale.items()))
                            printer.note(
                                f"not up to date: watching the cluster fails ({what}); retrying, "
                                "showing what was last seen" + (" and not deciding" if until_done else ""),
                                "yellow",
                            )
                        else:
                            printer.note("up to date again", "green")
                else:
                    report = await read_report(api, target)
            except StatusError as e:
                if not last:
                    raise  # the first read decides whether we can work at all
                printer.note(f"refresh failed, retrying in {interval:g}s: {e.message}", "yellow")
            else:
                if target.name is not None and not report.daemonsets:
                    raise not_found(target)
                if until_done and not report.daemonsets:
                    # Nothing to wait for is more likely a wrong -n (or policy match) than success.
                    where = f"namespace {target.namespace}" if target.namespace else "any namespace"
                    raise StatusError(
                        f"--until-done: no governed DaemonSet in {where}, so nothing to wait for "
                        "(check -n NAMESPACE / -A, or name the DaemonSet)"
                    )
                last.append(report)
                del last[:-1]
                printer.show(report, report.generated_at)
                if until_done and not stale:  # never decide on data known to be old
                    outcome = report.outcome()
                    if outcome is Outcome.FAILED:
                        printer.note(f"rollout failed: {_verdict(report)}", "bold red")
                        return exits.PROBLEM
                    if outcome is Outcome.DONE:
                        return exits.OK
                if not watch:
                    return exits.OK
                if not tried_live:
                    # The first read worked (access, RBAC, the CRD): from now on watch instead of
                    # reading everything again each interval.
                    tried_live = True
                    live = await _start_live(api, target, printer)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        if live is not None:
            await live.close()


WATCH_SYNC_TIMEOUT = 30.0


async def _start_live(api: client.ApiClient, target: Target, printer: Printer) -> LiveStatus | None:
    live = LiveStatus(api, namespace=target.namespace, static_policies=target.static_policies)
    await live.start()
    if await live.synced(WATCH_SYNC_TIMEOUT):
        return live
    await live.close()
    printer.note(
        f"watching the cluster did not sync in {WATCH_SYNC_TIMEOUT:g}s; reading it again each interval",
        "yellow",
    )
    return None
