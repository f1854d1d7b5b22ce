"""What the host-run dsguard processes of the tests and the demo share (HostWebhook, HostGuard):
waiting for /readyz while watching that the process is still alive, stopping them, their logs."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    url: str,
    *,
    what: str,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path,
    timeout: float,
    context: ssl.SSLContext | None = None,
    interval: float = 0.1,
) -> None:
    """Until GET url answers 200. RuntimeError (with the log's tail) as soon as the process
    exits; TimeoutError naming what /readyz last said after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log: {log_path}\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = e.read().decode(errors="replace")
        except OSError as e:
            last = str(e)
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s ({last}); log: {log_path}\n{log_tail(log_path)}")


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the process group (a clean shutdown: lease release, alert drain), SIGKILL it after
    `timeout` seconds. Nothing to do for a process never started or already gone."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
