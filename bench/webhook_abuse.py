"""Well-behaved clients' latency on the webhook port with and without abusive clients, one run.

Starts `dsguard webhook` (fixed policies and nodes, TLS, loopback; localcluster.static_webhook),
then three phases of --duration seconds each, with the same well-behaved load (keep-alive /validate
reviews, --concurrency at a time, as the apiserver sends them):

1. baseline: the good clients alone;
2. abuse: plus slowloris connections (request heads trickled), idle connections and TLS handshakes
   that never finish (--slowloris, --idle, --handshakes each; every abuser reconnects when closed,
   each kind from a loopback address of its own, so the server's per-client cap of 100 holds; the
   abusers run in a process of their own);
3. after: the abusers gone, the good clients alone again (recovery).

Prints the good clients' p50/p99 and failures per phase, p99 under abuse over the baseline's
(target: within 2x), how many abusive connections the server's timeouts closed, and the server's
RSS. The server runs with --read-header-timeout and --tls-handshake-timeout of --abuse-timeout
seconds so the timeouts fire within a phase.

    .venv/bin/python bench/webhook_abuse.py [--duration 10] [--slowloris 100] [--idle 100]
                                            [--handshakes 100] [--concurrency 2] [--abuse-timeout 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.webhook_load import POLICIES, UID_PLACEHOLDER, admission_review, agent_daemonset, make_nodes  # noqa: E402
from localcluster.abusive_clients import AbuserProcess, Kind, Latencies, good_client  # noqa: E402
from localcluster.static_webhook import StaticWebhook  # noqa: E402

TARGET_RATIO = 2.0


def review_body() -> Any:
    template = admission_review(agent_daemonset(compliant=True))
    placeholder = UID_PLACEHOLDER.encode()

    def body(i: int) -> bytes:
        return template.replace(placeholder, f"abuse-{i:08d}".encode(), 1)

    return body


def allowed(data: bytes) -> bool:
    return orjson.loads(data)["response"]["allowed"] is True


async def phase(server: StaticWebhook, args: argparse.Namespace) -> Latencies:
    return await good_client(
        server.url("/validate"), server.client_context(), review_body(), duration=args.duration,
        concurrency=args.concurrency, check=allowed,
    )  # fmt: skip


def row(name: str, lat: Latencies, seconds: float) -> str:
    p50, p99 = lat.percentile(50) * 1000, lat.percentile(99) * 1000
    rate = len(lat.ok) / seconds
    return f"{name:<9} {len(lat.ok):>7} {rate:>8.0f} {p50:>8.2f} {p99:>8.2f} {len(lat.failed):>7}"


async def run(args: argparse.Namespace) -> int:
    counts: dict[Kind, int] = {"slowloris": args.slowloris, "idle": args.idle, "handshake": args.handshakes}
    timeout = f"{args.abuse_timeout}s"
    with tempfile.TemporaryDirectory(prefix="dsguard-abuse-") as tmp:
        extra = ["--read-header-timeout", timeout, "--tls-handshake-timeout", timeout]
        with StaticWebhook(
            Path(tmp), policies=POLICIES, nodes=make_nodes(args.nodes), extra_args=extra
        ) as server:
            await good_client(  # warm-up: caches, the allocator, the client's own imports
                server.url("/validate"), server.client_context(), review_body(), duration=2.0
            )
            rss_start = server.rss_bytes()
            t0 = time.monotonic()
            baseline = await phase(server, args)
            t1 = time.monotonic()
            # One loopback address per kind: each a client of its own to the server's caps; in a
            # process of their own, out of the good clients' event loop.
            sources: dict[Kind, str] = {kind: f"127.0.0.{2 + i}" for i, kind in enumerate(counts)}
            with AbuserProcess(server.port, server.ca_pem, counts, source=sources) as abusers:
                await asyncio.sleep(2.0)  # let the abusers connect
                t2 = time.monotonic()
                abused = await phase(server, args)
                t3 = time.monotonic()
                rss_abuse = server.rss_bytes()
                held = {kind: (abusers.opened(kind), abusers.closed(kind)) for kind in counts}
            await asyncio.sleep(1.0)
            t4 = time.monotonic()
            after = await phase(server, args)
            t5 = time.monotonic()
            rss_end = server.rss_bytes()

    print(
        f"dsguard webhook under abusive clients: {args.slowloris} slowloris, {args.idle} idle, "
        f"{args.handshakes} stuck TLS handshakes (each reconnecting when closed); server timeouts "
        f"{timeout} (header, handshake); good clients: {args.concurrency} keep-alive connections of "
        f"/validate reviews, {args.duration:g}s per phase"
    )
    print(f"{'phase':<9} {'reviews':>7} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    print(row("baseline", baseline, t1 - t0))
    print(row("abuse", abused, t3 - t2))
    print(row("after", after, t5 - t4))
    ratio = abused.percentile(99) / baseline.percentile(99)
    for kind, (opened, closed) in held.items():
        print(f"  {kind:<9} connections opened {opened:>6}, closed by the server {closed:>6}")
    per_connection = (rss_abuse - rss_start) / max(1, args.slowloris + args.idle + args.handshakes)
    print(
        f"RSS: {rss_start / 2**20:.1f} MiB at start, {rss_abuse / 2**20:.1f} MiB under abuse "
        f"(~{per_connection / 1024:.0f} KiB per abusive connection), {rss_end / 2**20:.1f} MiB after "
        "(freed memory stays with the allocator)"
    )
    ok = ratio <= TARGET_RATIO and not abused.failed and not after.failed
    verdict = "MET" if ok else "MISSED"
    print(f"p99 under abuse / baseline p99: {ratio:.2f}x (target <= {TARGET_RATIO:g}x): {verdict}")
    for failure in (abused.failed + after.failed)[:5]:
        print(f"  failure: {failure}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--slowloris", type=int, default=100)
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--handshakes", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--abuse-timeout", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 s phases")
    args = parser.parse_args()
    if args.quick:
        args.duration = 3.0
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
