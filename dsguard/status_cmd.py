"""`dsguard status` (also `kubectl dsguard status`): rollout, guard and policy state of governed
DaemonSets, once or live (--watch), and `--until-done` for pipelines. See docs/status.md.

The cluster is read once per refresh: Nodes, the DaemonSets' pods and ControllerRevisions here,
DaemonSets, Namespaces and DaemonSetPolicies through dsguard.cluster_snapshot; the report itself
is built by the pure dsguard.status_report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import click
import orjson
import yaml
from kubernetes_asyncio import client
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dsguard.cli_options import (
    DURATION,
    all_namespaces_opt,
    context_opt,
    kubeconfig_opt,
    namespace_opt,
    output_opt,
    policy_files_opt,
    resolve_namespace,
)
from dsguard.documents import InputError, load_policies
from dsguard.kube import ListError, list_explained, list_scoped
from dsguard.pod_health import REVISION_LABEL
from dsguard.policy import Policy
from dsguard.scheduling import NodeInfo
from dsguard.status_live import LiveStatus
from dsguard.status_report import DaemonSetReport, Outcome, Rollout, StatusReport, build_report

EXIT_OK = 0
EXIT_ROLLOUT_FAILED = 1  # --until-done: paused or rolled back by the guard, or --timeout passed
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # --until-done interrupted (Ctrl-C) before the rollouts finished

REQUEST_TIMEOUT = 60.0  # seconds, per list request


class StatusError(click.ClickException):
    """What went wrong and how to fix it, on one line; exit status 2."""

    exit_code = EXIT_ERROR


# --- reading the cluster --------------------------------------------------------------------------


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
                f"cannot reach the apiserver at {api.configuration.host}: {e} "
                "(is the cluster up? check --kubeconfig / --context)"
            ) from None
        raise StatusError(str(e)) from None
    except SnapshotError as e:
        raise StatusError(str(e)) from None
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


async def _api(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    from dsguard.kube import ClientConfigError, api_client

    try:
        return await api_client(kubeconfig, context)
    except ClientConfigError as e:
        raise StatusError(
            f"{e} (pass --kubeconfig FILE, set KUBECONFIG, or pick a context with --context)"
        ) from None


def _not_found(target: Target) -> StatusError:
    where = f"namespace {target.namespace}" if target.namespace else "any namespace"
    return StatusError(
        f'DaemonSet "{target.name}" not found in {where} '
        "(check the name and -n NAMESPACE, or use -A to look in every namespace)"
    )


# --- rendering ------------------------------------------------------------------------------------


def age(seconds: float) -> str:
    """kubectl-style: 45s, 3m12s, 2h5m, 3d4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _since(timestamp: str, now: float) -> str:
    try:
        at = dt.datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return timestamp or "an unknown time"
    return f"{timestamp} ({age(now - at)} ago)"


def _marker(d: DaemonSetReport) -> Text:
    state = d.rollout
    if state is Rollout.PAUSED:
        return Text("PAUSED", style="bold red")
    if state is Rollout.ROLLED_BACK:
        return Text("ROLLED BACK", style="bold red")
    return Text("-")


def _state(d: DaemonSetReport) -> Text:
    state = d.rollout
    if state in (Rollout.PAUSED, Rollout.ROLLED_BACK):
        return _marker(d)
    if state is Rollout.COMPLETE:
        return Text("complete", style="green")
    return Text("progressing", style="yellow")


def _count(n: int, style: str) -> Text:
    return Text(str(n), style=style if n else "")


def details(d: DaemonSetReport, now: float) -> list[Text]:
    """The lines under the table about one DaemonSet ([] when there is nothing to say)."""
    lines: list[Text] = []
    if not d.governed:
        lines.append(Text("not governed: no DaemonSetPolicy matches it", style="yellow"))
    if not d.generation_observed:
        lines.append(
            Text(
                f"waiting for the DaemonSet controller: observedGeneration {d.observed_generation} "
                f"< generation {d.generation}",
                style="yellow",
            )
        )
    if d.failing:
        rev = d.update_revision or "?"
        parts = ", ".join(f"{r.count} {r.reason} ({r.updated} on update revision)" for r in d.failing)
        lines.append(Text(f"failing pods ({d.failing_total}, revision {rev}): {parts}", style="red"))
    if d.paused is not None:
        if d.paused.current:
            lines.append(
                Text(
                    f"PAUSED by dsguard since {_since(d.paused.since, now)}, "
                    f"revision {d.paused.revision or '?'}: {d.paused.reason}",
                    style="bold red",
                )
            )
        else:
            lines.append(
                Text(
                    f"paused revision {d.paused.revision} was replaced by {d.update_revision}: "
                    "the guard resumes the rollout",
                    style="yellow",
                )
            )
        if d.paused.current:
            lines.append(Text(f"  resume: dsguard resume {d.ref}", style="dim"))
    if d.rolled_back is not None:
        style = "bold red" if d.rolled_back.current else "dim"
        prefix = "ROLLED BACK" if d.rolled_back.current else "earlier: rolled back"
        lines.append(
            Text(
                f"{prefix} by dsguard from revision {d.rolled_back.revision} to {d.rolled_back.to}: "
                f"{d.rolled_back.reason}",
                style=style,
            )
        )
    if d.stalled:
        lines.append(
            Text(f"stalled: the guard saw no progress on revision {d.update_revision}", style="yellow")
        )
    for v in d.violations:
        style = "red" if v.severity == "violation" else "yellow"
        lines.append(Text(f'{v.severity}: DaemonSetPolicy "{v.policy}" ({v.rule}): {v.message}', style=style))
    return lines


def status_table(report: StatusReport, *, show_namespace: bool) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    if show_namespace:
        table.add_column("NAMESPACE")
    for col in ("NAME", "POLICIES"):
        table.add_column(col)
    for col in ("DESIRED", "UPDATED", "READY", "FAILING"):
        table.add_column(col, justify="right")
    for col in ("PAUSED", "VIOLATIONS"):
        table.add_column(col)
    for d in report.daemonsets:
        table.add_row(
            *([Text(d.namespace)] if show_namespace else []),
            Text(d.name, style="bold"),
            Text(",".join(d.policies) if d.policies else "<none>"),
            Text(str(d.desired)),
            Text(str(d.updated)),
            Text(str(d.ready)),
            _count(d.failing_total, "red"),
            _marker(d),
            _count(len(d.violations), "red") if d.violations else Text("-"),
        )
    return table


def details_block(report: StatusReport, now: float) -> list[RenderableType]:
    out: list[RenderableType] = []
    for d in report.daemonsets:
        lines = details(d, now)
        if lines:
            out.append(Text(""))
            out.append(Text(d.ref, style="bold"))
            out.extend(Text.assemble("  ", line) for line in lines)
    return out


def policy_warnings(report: StatusReport) -> list[Text]:
    return [
        Text(
            f"warning: DaemonSetPolicy/{name} is invalid and ignored: {' '.join(err.split())}", style="yellow"
        )
        for name, err in sorted(report.policy_errors.items())
    ]


def empty_message(report: StatusReport) -> str:
    where = f"namespace {report.namespace}" if report.namespace else "any namespace"
    return f"No DaemonSet in {where} is governed by a DaemonSetPolicy."


BAR_WIDTH = 10


def _bar(done: int, desired: int, style: str) -> ProgressBar:
    if desired <= 0:  # nothing to run: a full bar rather than a division by zero
        return ProgressBar(total=1, completed=1, width=BAR_WIDTH, complete_style=style, finished_style=style)
    return ProgressBar(
        total=desired,
        completed=min(done, desired),
        width=BAR_WIDTH,
        complete_style=style,
        finished_style=style,
    )


def watch_view(report: StatusReport, *, show_namespace: bool, interval: float, now: float) -> Group:
    """The --watch display on a terminal: progress bars (updated/desired, ready/desired), failing
    pods and the guard's marker per DaemonSet; the details (violations too) under it."""
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False, padding=(0, 1, 0, 0))
    if show_namespace:
        table.add_column(
            "NAMESPACE", no_wrap=True, min_width=max((len(d.namespace) for d in report.daemonsets), default=9)
        )
    table.add_column("NAME", no_wrap=True, min_width=max((len(d.name) for d in report.daemonsets), default=4))
    table.add_column("UPDATED", width=BAR_WIDTH, no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    table.add_column("READY", width=BAR_WIDTH, no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    table.add_column("FAILING", justify="right", no_wrap=True)
    table.add_column("ROLLOUT", no_wrap=True)
    for d in report.daemonsets:
        bad = d.rollout in (Rollout.PAUSED, Rollout.ROLLED_BACK)
        style = "red" if bad else "green" if d.rollout is Rollout.COMPLETE else "yellow"
        table.add_row(
            *([Text(d.namespace)] if show_namespace else []),
            Text(d.name, style="bold"),
            _bar(d.updated, d.desired, style),
            Text(f"{d.updated}/{d.desired}"),
            _bar(d.ready, d.desired, style),
            Text(f"{d.ready}/{d.desired}"),
            _count(d.failing_total, "red"),
            _state(d),
        )
    clock = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%H:%M:%S UTC")
    head = Text(f"dsguard status · every {interval:g}s · {clock} · Ctrl-C to stop", style="dim")
    body: list[RenderableType] = [head, table] if report.daemonsets else [head, Text(empty_message(report))]
    return Group(*body, *details_block(report, now), *policy_warnings(report))


# --- output modes ---------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width: int | None = None
    if not stream.isatty():
        # Piped: don't wrap at rich's 80-column default; one DaemonSet, one line.
        width = int(os.environ.get("COLUMNS") or 0) or 250
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


class Printer:
    """Shows each report: a document or a table per change, or a Live view on a terminal."""

    def __init__(self, output: str, *, watch: bool, show_namespace: bool, interval: float) -> None:
        self.output = output
        self.watch = watch
        self.show_namespace = show_namespace
        self.interval = interval
        self.out = _console()
        self.err = _console(stderr=True)
        self.live: Live | None = None
        self._last: dict[str, Any] | None = None
        self._last_errors: dict[str, str] | None = None

    def __enter__(self) -> Printer:
        if self.watch and self.output == "table" and self.out.is_terminal:
            self.live = Live(console=self.out, auto_refresh=False, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def show(self, report: StatusReport, now: float) -> None:
        if self.live is not None:
            view = watch_view(report, show_namespace=self.show_namespace, interval=self.interval, now=now)
            self.live.update(view, refresh=True)
            return
        content = report.content()
        if self.watch and content == self._last:
            return
        self._last = content
        if dict(report.policy_errors) != self._last_errors:
            self._last_errors = dict(report.policy_errors)
            for w in policy_warnings(report):
                self.err.print(w, soft_wrap=True)
        if self.output == "json":
            opt = 0 if self.watch else orjson.OPT_INDENT_2  # --watch: JSON Lines, one per change
            self.out.file.write(orjson.dumps(report.to_dict(), option=opt).decode() + "\n")
        elif self.output == "yaml":
            text = yaml.safe_dump(report.to_dict(), sort_keys=False, allow_unicode=True)
            self.out.file.write(("---\n" if self.watch else "") + text)
        else:
            self._table(report, now)
        self.out.file.flush()

    def _table(self, report: StatusReport, now: float) -> None:
        if self.watch:
            stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.out.print(Text(f"--- {stamp}", style="dim"), soft_wrap=True)
        if not report.daemonsets:
            self.err.print(empty_message(report), soft_wrap=True)
            return
        table = status_table(report, show_namespace=self.show_namespace)
        if self.out.is_terminal:
            self.out.print(table)
        else:  # piped: no trailing padding on every line
            with self.out.capture() as captured:
                self.out.print(table)
            self.out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        for block in details_block(report, now):
            self.out.print(block, soft_wrap=True)

    def note(self, message: str, style: str = "") -> None:
        """A line for people, on stderr (above the Live view while there is one)."""
        console = self.live.console if self.live is not None else self.err
        console.print(Text(message, style=style), soft_wrap=True)


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


async def _run(
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
    api = await _api(kubeconfig, context)
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
                return EXIT_ROLLOUT_FAILED
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
                    raise _not_found(target)
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
                        return EXIT_ROLLOUT_FAILED
                    if outcome is Outcome.DONE:
                        return EXIT_OK
                if not watch:
                    return EXIT_OK
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


@click.command("status")
@click.argument("name", required=False)
@kubeconfig_opt
@context_opt
@namespace_opt
@all_namespaces_opt
@output_opt("table", "json", "yaml", default="table")
@policy_files_opt
@click.option(
    "-w", "--watch", is_flag=True, help="Keep showing the rollouts as they progress (Ctrl-C to stop)."
)
@click.option(
    "--interval",
    default="2s",
    show_default=True,
    type=DURATION,
    help="With --watch: seconds (or a duration such as 500ms) between reads of the cluster.",
)
@click.option(
    "--until-done",
    is_flag=True,
    help="Watch until every shown rollout is complete (exit 0), or one is paused or rolled back "
    "by the guard (exit 1), as `kubectl rollout status` does. Implies --watch.",
)
@click.option(
    "--timeout",
    default=None,
    type=DURATION,
    help="With --until-done: give up (exit 1) after this long, e.g. 90s or 5m. Default: no limit.",
)
def status(
    name: str | None,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    all_namespaces: bool,
    output: str,
    policy_files: tuple[str, ...],
    watch: bool,
    interval: float,
    until_done: bool,
    timeout: float | None,
) -> None:
    """Rollout, guard and policy state of the governed DaemonSets (or of DaemonSet NAME).

    Per DaemonSet: desired, updated and ready pods, failing pods by reason, whether the rollout
    guard paused or rolled it back (since when, why), and what its DaemonSetPolicies find wrong
    with it. Exit 0; with --until-done 0 when complete, 1 when paused or rolled back or timed out;
    2 on errors (cluster unreachable, forbidden, NAME not found, invalid policy file).
    """
    if interval <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--interval")
    if timeout is not None and not until_done:
        raise click.UsageError("--timeout needs --until-done")
    if timeout is not None and timeout <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--timeout")
    static: tuple[Policy, ...] | None = None
    if policy_files:
        try:
            static = tuple(load_policies(list(policy_files)))
        except InputError as e:
            head, _, rest = str(e).partition("\n")
            lines = [line.strip() for line in rest.splitlines() if line.strip()]
            raise StatusError(f"{head} {'; '.join(lines)}".strip() + " (fix the --policy-file)") from None
    target = Target(
        namespace=resolve_namespace(kubeconfig, context, namespace, all_namespaces),
        name=name,
        static_policies=static,
    )
    watch = watch or until_done
    printer = Printer(output, watch=watch, show_namespace=target.namespace is None, interval=interval)
    try:
        code = asyncio.run(
            _run(
                target,
                kubeconfig=kubeconfig,
                context=context,
                printer=printer,
                watch=watch,
                until_done=until_done,
                interval=interval,
                give_up_after=timeout,
            )
        )
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED if until_done else EXIT_OK
    sys.exit(code)
