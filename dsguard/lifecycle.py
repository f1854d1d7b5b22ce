"""Process lifecycle shared by the long-running commands (webhook, guard)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable


async def wait_for_shutdown_signal() -> None:
    """Return on the first SIGTERM (the kubelet stopping the pod) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel background tasks (watches, loops) and wait until each has stopped."""
    pending = list(tasks)
    for t in pending:
        t.cancel()
    for t in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await t
