"""How `dsguard status` shows a report: a table and the details under it, the --watch view with
progress bars on a terminal, JSON Lines or YAML documents when piped (Printer)."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

import orjson
import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dsguard.status_report import DaemonSetReport, Rollout, StatusReport


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
    if d.waves is not None:
        w = d.waves
        head = f"wave {w.index + 1}/{len(w.waves)} ({w.current.name})"
        if w.waiting:
            head += f": {w.waiting}"
        if w.takeover:
            head += f" (the controller had replaced {w.takeover} pod(s) before the guard took over)"
        lines.append(Text(head, style="cyan"))
        for i, row in enumerate(w.waves):
            mark = ">" if i == w.index else " "
            counts = f"{row.updated}/{row.nodes} updated, {row.available} available"
            lines.append(Text(f"  {mark} {i + 1}. {row.name}: {counts}"))
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
