"""The harness's process toolkit: what the local cluster, the host-run dsguard processes
(HostWebhook, HostGuard), the demo, the benchmarks and the tests share about child processes.

* launch(): a command in its own session (so its process group is its pid), output appended to a
  log file, optionally SIGKILLed when the thread that started it ends (PR_SET_PDEATHSIG).
* stop_group(): SIGTERM a process group, SIGKILL it after a grace period, with the pid-reuse guard:
  a group is signalled only while its leader is the process that was started (same pid *and*
  start time) or members of it remain (Linux never reuses a pid that is a live process group id).
* free_port()/free_ports(), listening_pids() (who holds a port, from /proc), log_tail(),
  process_stats().
* http_get() and wait_ready(): an HTTP(S) health endpoint (or any check) polled with a deadline,
  failing at once, with the log's tail, if the process exits meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "CLK_TCK",
    "Child",
    "NotReady",
    "ProcessExited",
    "ProcessStats",
    "free_port",
    "free_ports",
    "group_members",
    "http_get",
    "launch",
    "listening_pids",
    "log_tail",
    "proc_stat",
    "process_stats",
    "set_pdeathsig",
    "stop_group",
    "wait_ready",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"
_TAIL_BYTES = 64 * 1024


# --- ports ---------------------------------------------------------------------------------


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """n distinct free TCP ports on host (held open together so none repeats)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on host right now (bound and closed again: nothing listens on it)."""
    (port,) = free_ports(1, host)
    return port


def _listening_inodes(port: int) -> set[int]:
    """Socket inodes in LISTEN state on a local TCP port (from /proc/net/tcp{,6})."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(parts[9]))
    return inodes


def listening_pids(port: int) -> set[int]:
    """Pids holding a listening TCP socket on port (any local address), found through /proc.

    Reads the kernel's socket table instead of connecting, which on loopback can
    self-connect when port is in the ephemeral range and nothing listens.
    """
    targets = {f"socket:[{i}]" for i in _listening_inodes(port)}
    pids: set[int] = set()
    if not targets:
        return pids
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = list(os.scandir(f"/proc/{entry.name}/fd"))
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd.path) in targets:
                    pids.add(int(entry.name))
                    break
            except OSError:
                continue
    return pids


# --- logs ----------------------------------------------------------------------------------


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a log (read from its last 64 KiB); "" if it can't be read."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --- /proc ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, starttime) of a live pid from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": comm may contain spaces
    # fields[0] is field 3 (state); pgrp is field 5; starttime is field 22
    return fields[0], int(fields[2]), int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Pids (not zombies) whose process group is pgid."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        st = proc_stat(int(entry.name))
        if st and st[1] == pgid and st[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class ProcessStats:
    rss_bytes: int  # VmRSS
    hwm_bytes: int  # VmHWM: the peak RSS so far
    cpu_seconds: float  # user + system


def process_stats(pid: int) -> ProcessStats:
    """VmRSS, VmHWM and CPU seconds of a live process, from /proc."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # reported in kB
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_comm = stat[stat.rindex(")") + 2 :].split()  # comm may contain spaces
    utime, stime = int(after_comm[11]), int(after_comm[12])  # fields 14 and 15 of proc(5)
    return ProcessStats(fields.get("VmRSS", 0), fields.get("VmHWM", 0), (utime + stime) / CLK_TCK)


# --- starting and stopping -------------------------------------------------------------------


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: SIGKILL this child when the thread that forked it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def _reaped(popen: subprocess.Popen[bytes] | None) -> bool:
    """Has our child exited and been reaped (True without one)? A multi-threaded leader shows as a
    zombie while its other threads still exit, and cannot be reaped until they have."""
    if popen is None:
        return True
    with contextlib.suppress(ChildProcessError):
        return popen.poll() is not None
    return True  # reaped by someone else


def _gone(pgid: int, popen: subprocess.Popen[bytes] | None) -> bool:
    return _reaped(popen) and not group_members(pgid)


def stop_group(
    pgid: int,
    *,
    leader: int,
    start_time: int,
    grace: float,
    popen: subprocess.Popen[bytes] | None = None,
    kill_wait: float = 5.0,
    sigterm: bool = True,
) -> list[int]:
    """SIGTERM process group `pgid`, SIGKILL it after `grace` seconds (at once without sigterm);
    the pids that survived (still there `kill_wait` seconds after the SIGKILL), [] when the group
    is gone.

    `leader` and `start_time` name the process that was started (its /proc starttime): the
    pid-reuse guard. Once that leader is gone (its pid maybe reused) the group is signalled only
    if members of it remain, which are still ours: Linux does not hand out a pid that is in use
    as a process group id. `popen` (the leader's, if this process started it) is reaped: the group
    counts as gone once it is.
    """
    if pgid <= 0:
        return []
    st = proc_stat(leader)
    leader_is_ours = st is not None and st[2] == start_time
    if not leader_is_ours and not group_members(pgid):
        _reaped(popen)
        return []
    steps = [(signal.SIGTERM, grace)] if sigterm else []
    for sig, wait in [*steps, (signal.SIGKILL, kill_wait)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pgid, popen):
                return []
            time.sleep(0.1)
    if _gone(pgid, popen):
        return []
    return group_members(pgid) or [pgid]  # the leader, not reaped yet


class ProcessExited(RuntimeError):
    """The process exited while it was waited for."""

    def __init__(self, what: str, returncode: int | None, log: Path | None) -> None:
        self.returncode = returncode
        self.log = log
        super().__init__(f"{what} exited with {returncode}; log: {log}\n{log_tail(log)}")


class NotReady(TimeoutError):
    """Not ready by the deadline; `last` says what the last check answered or raised (`error`)."""

    def __init__(
        self, what: str, timeout: float, last: str, log: Path | None, error: BaseException | None = None
    ) -> None:
        self.last = last
        self.log = log
        self.error = error
        where = f"; log: {log}\n{log_tail(log)}" if log is not None else ""
        super().__init__(f"{what} not ready after {timeout:g}s ({last}){where}")


@dataclass
class Child:
    """A process started by launch(): the leader of its own process group, output in `log`."""

    popen: subprocess.Popen[bytes]
    log: Path
    start_time: int  # the leader's /proc starttime, for the pid-reuse guard

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)

    def stop(self, grace: float = 15.0) -> list[int]:
        """SIGTERM the group (a clean shutdown), SIGKILL after `grace`; the survivors."""
        return stop_group(
            self.pid, leader=self.pid, start_time=self.start_time, grace=grace, popen=self.popen
        )

    def kill(self) -> list[int]:
        """SIGKILL the group, no SIGTERM first (no clean shutdown: as an OOM kill); the survivors."""
        return stop_group(self.pid, leader=self.pid, start_time=self.start_time, grace=0, popen=self.popen,
                          kill_wait=10.0, sigterm=False)  # fmt: skip


def launch(
    cmd: Sequence[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
    header: str | None = None,
) -> Child:
    """Start cmd in a new session (its own process group), stdin from /dev/null, stdout and stderr
    appended to `log` (its directory created), after a `header` line if given. env None: this
    process's environment without KUBECONFIG (every child is pointed at its cluster explicitly).
    die_with_parent: SIGKILLed when the calling thread ends (start it from a thread that lives as
    long as the child should)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        if header is not None:
            out.write(f"{header}\n".encode())
            out.flush()
        popen = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            preexec_fn=set_pdeathsig if die_with_parent else None,
        )
    st = proc_stat(popen.pid)
    return Child(popen=popen, log=log, start_time=st[2] if st else 0)


# --- readiness -------------------------------------------------------------------------------


class _HTTPSConnection(http.client.HTTPSConnection):
    """Verifies the server's certificate for `server_hostname` instead of the host dialled."""

    def __init__(self, host: str, port: int | None, *, context: ssl.SSLContext, server_hostname: str,
                 timeout: float) -> None:  # fmt: skip
        super().__init__(host, port, context=context, timeout=timeout)
        self._ctx = context
        self._server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_hostname)


def http_get(
    url: str,
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 3.0,
) -> tuple[int, bytes]:
    """GET url (http or https): its status and body, whatever the status. For https, `context`
    verifies the server (default: the system's CAs), for `server_hostname` if given (the name in
    the certificate, when it is not the host dialled). Raises OSError (ssl errors included) or
    http.client.HTTPException when there is no answer."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or LOOPBACK
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = context or ssl.create_default_context()
        if server_hostname is not None:
            conn = _HTTPSConnection(host, parts.port, context=ctx, server_hostname=server_hostname,
                                    timeout=timeout)  # fmt: skip
        else:
            conn = http.client.HTTPSConnection(host, parts.port, context=ctx, timeout=timeout)
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    else:
        raise ValueError(f"not an http(s) URL: {url}")
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class _Answer(Exception):
    """A health endpoint's answer other than 200."""


class Watched(Protocol):
    """What wait_ready watches while it waits (a Child, or localcluster.cluster's components)."""

    log: Path

    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...


def wait_ready(
    probe: str | Callable[[], bool],
    *,
    what: str,
    timeout: float,
    child: Watched | None = None,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    interval: float = 0.1,
) -> None:
    """Until the probe passes: a URL answering GET with 200 (see http_get for context and
    server_hostname), or a callable returning True (OSError, HTTPException and ValueError count
    as not yet, and are reported). Checked at least once.

    Raises ProcessExited (with the log's tail) as soon as `child` is no longer alive, and NotReady
    (a TimeoutError naming what the probe last said) after `timeout` seconds."""
    if isinstance(probe, str):
        url = probe

        def check() -> bool:
            status, body = http_get(url, context=context, server_hostname=server_hostname, timeout=2.0)
            if status != 200:
                raise _Answer(f"{status} {body.decode(errors='replace').strip()}")
            return True
    else:
        check = probe
    log = child.log if child is not None else None
    deadline = time.monotonic() + timeout
    last, error = "no answer yet", None
    while True:
        if child is not None and not child.alive():
            raise ProcessExited(what, child.returncode, log)
        try:
            if check():
                return
            last, error = "not yet", None
        except _Answer as e:
            last, error = str(e), None
        except (OSError, http.client.HTTPException, ValueError) as e:
            last, error = f"{type(e).__name__}: {e}", e
        if time.monotonic() >= deadline:
            raise NotReady(what, timeout, last, log, error)
        time.sleep(interval)
