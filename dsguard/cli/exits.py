"""The exit status of every `dsguard` command (README, "Exit codes"), and bad input as one line.

| code | meaning |
| 0 | ok |
| 1 | found a problem: denied (`check`), would break (`upgrade-check`), paused or rolled back by the
|   | guard or timed out (`status --until-done`), errors left (`certs run --once`) |
| 2 | bad input: bad flags, an unreadable or invalid file, an invalid policy, an unusable
|   | kubeconfig, a cluster unreachable (or refusing) at start |
| 130 | `status --until-done` interrupted (Ctrl-C) before it could decide |

click exits 2 on its own usage errors (unknown flag, bad value, missing file); BadInput does for
ours, with `dsguard COMMAND: WHAT: PROBLEM; fix: HOW` on stderr, and never a traceback.
"""

from __future__ import annotations

from typing import IO, Any

import click

from dsguard.documents import InputError

OK = 0
PROBLEM = 1
BAD_INPUT = 2
INTERRUPTED = 130


def one_line(text: str) -> str:
    """A multi-line message (an InputError listing each invalid field) as one line."""
    out = ""
    for line in (part.strip() for part in str(text).splitlines()):
        if line:
            out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out


def _command_path(ctx: click.Context | None) -> str:
    names: list[str] = []
    while ctx is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["dsguard", *reversed(names[:-1])])  # the root is `dsguard` whatever argv[0] was


class BadInput(click.ClickException):
    """Bad input: one line naming what is wrong and the fix, as `dsguard COMMAND: MESSAGE`; exit 2."""

    exit_code = BAD_INPUT

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        text = one_line(message) + (f"; fix: {fix}" if fix else "")
        super().__init__(text)
        self.command = _command_path(click.get_current_context(silent=True))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{self.command}: {self.format_message()}", err=file is None, file=file)


def bad_file(flag: str, e: InputError, *, fix: str) -> BadInput:
    """An InputError about the files of `flag` (a policy, nodes or manifest file)."""
    return BadInput(f"{flag}: {e}", fix=fix)


FIX_UNREACHABLE = "check that the cluster is up and that --kubeconfig (or KUBECONFIG) points at it"
FIX_NODES_FILE = "give Node objects, e.g. `kubectl get nodes -o yaml` output"
FIX_POLICY_FILE = "correct the DaemonSetPolicy file (docs/policy.md describes every field)"


def bad_kubeconfig(e: Exception, *, context_flag: bool) -> BadInput:
    """dsguard.kube.ClientConfigError: the Kubernetes client config could not be loaded."""
    fix = "pass --kubeconfig FILE or set KUBECONFIG" + (
        ", or pick a context with --context" if context_flag else ""
    )
    return BadInput(str(e), fix=fix)
