"""Where a review's server CPU goes: `dsguard webhook` with one part taken out at a time, against
the minimal aiohttp webhook, in the same run.

Each variant is the real `dsguard webhook` process (static policies and nodes, TLS, loopback) with
one thing changed in it before it serves (monkeypatched here, never in the product):

- `dsguard`: as shipped;
- `rules-stubbed`: `serve_admission` replaced by parse, echo the uid, allow (dsguard's HTTP layer
  alone: connection gate, request cycle, body-read checks, metrics);
- `rules-stubbed-no-gate`: the same, served by `create_server(ssl=)` without the connection gate;
- `gc-frozen`: as shipped, `gc.freeze()` once the caches are warm;
- `timed`: as shipped, with `serve_admission`'s own thread CPU summed around each call.

Every server is pinned to CPU 0 and wrk (Debian's `wrk`) to CPU 1, 8 TLS keep-alive connections,
bench/webhook_load.py's distinct reviews (a new image tag each: the rules run in full); rounds
alternate the servers. Prints µs of server CPU per review (utime+stime from /proc) per variant
and endpoint, and for `timed` the part spent inside `serve_admission`, beside the same reviews'
`serve_admission` CPU in this process (no HTTP, no TLS, a tight loop).

    .venv/bin/python bench/webhook_cpu_parts.py [--rounds 3] [--seconds 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.webhook_load import (  # noqa: E402
    POLICIES,
    UID_PLACEHOLDER,
    WRK_SCRIPT,
    Server,
    admission_review,
    agent_daemonset,
    cpu_seconds,
    make_nodes,
    minimal_webhook,
    wait_ready_async,
    wrk,
)
from localcluster.procs import free_port, launch  # noqa: E402
from localcluster.webhook_host import loopback_tls_files  # noqa: E402

VARIANTS = ("dsguard", "rules-stubbed", "rules-stubbed-no-gate", "gc-frozen", "timed")
ENDPOINTS = ("validate", "mutate")
_TIMED = re.compile(r"serve_admission cpu_us=([\d.]+) reviews=(\d+)")


# --- inside the server process (`--serve VARIANT`) ------------------------------------------------


def _serve(variant: str, webhook_args: list[str]) -> None:
    """Change one part of `dsguard webhook`, then run it with webhook_args."""
    import webhook.server as srv
    from dsguard.cli import main as dsguard_main
    from webhook import review

    if variant.startswith("rules-stubbed"):

        def stubbed(state: Any, endpoint: Any, body: bytes) -> tuple[int, bytes, str]:
            uid = orjson.loads(body)["request"]["uid"]
            return 200, review.encode(uid, allowed=True), "allowed"

        srv.serve_admission = stubbed
    if variant == "rules-stubbed-no-gate":
        from aiohttp import web

        async def run_without_gate(state: Any, *, ssl_context: Any, host: str, port: int, **_: Any) -> None:
            runner = web.AppRunner(srv.make_app(state), access_log=None, keepalive_timeout=120)
            await runner.setup()
            assert runner.server is not None
            loop = asyncio.get_running_loop()
            await loop.create_server(runner.server, host, port, ssl=ssl_context, backlog=1024)
            await asyncio.Event().wait()

        srv.run = run_without_gate
    if variant == "gc-frozen":
        served = srv.run

        async def run_then_freeze(state: Any, **kwargs: Any) -> None:
            async def freeze() -> None:
                await asyncio.sleep(2)  # the caches warm while the readiness probe runs
                gc.collect()
                gc.freeze()

            task = asyncio.get_running_loop().create_task(freeze())
            await served(state, **kwargs)
            task.cancel()

        srv.run = run_then_freeze
    if variant == "timed":
        serve = srv.serve_admission
        spent = [0, 0]

        def timed(state: Any, endpoint: Any, body: bytes) -> tuple[int, bytes, str]:
            t0 = time.thread_time_ns()
            try:
                return serve(state, endpoint, body)
            finally:
                spent[0] += time.thread_time_ns() - t0
                spent[1] += 1
                if spent[1] == 2000:
                    print(f"serve_admission cpu_us={spent[0] / spent[1] / 1000:.1f} reviews={spent[1]}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    spent[0] = spent[1] = 0

        srv.serve_admission = timed
    sys.argv = ["dsguard", "webhook", *webhook_args]
    dsguard_main()


# --- the driver -------------------------------------------------------------------------------


@contextlib.contextmanager
def variant_server(workdir: Path, variant: str, tls: dict[str, Path], ca_pem: bytes) -> Iterator[Server]:
    port = free_port()
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--serve", variant, "--",
        "--tls-cert-file", str(tls["tls.crt"]), "--tls-private-key-file", str(tls["tls.key"]),
        "--host", "127.0.0.1", "--port", str(port),
        "--policy-file", str(workdir / "policies.yaml"), "--nodes", str(workdir / "nodes.yaml"),
        "--kubernetes-version", "v1.33.4", "--log-level", "warning",
    ]  # fmt: skip
    child = launch(cmd, log=workdir / f"{variant}.log", cwd=REPO, env=os.environ)
    try:
        yield Server(child=child, port=port, ca_pem=ca_pem)
    finally:
        child.stop(15)


def in_process_us(endpoint: str, body: bytes, reviews: int = 3000) -> float:
    """serve_admission's CPU per review here, a tight loop over distinct reviews (best of 3)."""
    from dsguard.cluster_cache import ClusterCache
    from dsguard.policy import parse_policy
    from dsguard.scheduling import NodeInfo
    from webhook.server import WebhookState, serve_admission

    best = float("inf")
    for p in range(3):
        cache = ClusterCache(static_policies=[parse_policy(x) for x in POLICIES])
        cache.use_static_facts([NodeInfo.from_node(n) for n in make_nodes(100)], "v1.33.4")
        state = WebhookState(cache=cache)
        bodies = [
            body.replace(UID_PLACEHOLDER.encode(), f"00000000-0000-4000-8000-{p:04x}{i:08x}".encode())
            for i in range(reviews)
        ]
        t0 = time.process_time()
        for b in bodies:
            serve_admission(state, endpoint, b)  # type: ignore[arg-type]
        best = min(best, (time.process_time() - t0) / reviews * 1e6)
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset: apt-get install wrk util-linux")
    bodies = {
        "validate": admission_review(agent_daemonset(compliant=True), distinct=True),
        "mutate": admission_review(agent_daemonset(compliant=False), distinct=True),
    }
    per_review: dict[tuple[str, str], list[float]] = {}
    timed: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dsguard-parts-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        tls, ca_pem = loopback_tls_files(workdir / "tls")
        (workdir / "policies.yaml").write_text(yaml.safe_dump_all(POLICIES, sort_keys=False))
        nodes = {"apiVersion": "v1", "kind": "List", "items": make_nodes(100)}
        (workdir / "nodes.yaml").write_text(yaml.safe_dump(nodes))
        scripts = {}
        for endpoint, body in bodies.items():
            (workdir / f"{endpoint}.json").write_bytes(body)
            scripts[endpoint] = workdir / f"{endpoint}.lua"
            scripts[endpoint].write_text(WRK_SCRIPT.format(body=workdir / f"{endpoint}.json"))
        servers = {"minimal": stack.enter_context(minimal_webhook(workdir))}
        for variant in VARIANTS:
            servers[variant] = stack.enter_context(variant_server(workdir, variant, tls, ca_pem))
        for server in servers.values():
            asyncio.run(wait_ready_async(server))
            os.sched_setaffinity(server.child.pid, {0})
        timed_log = workdir / "timed.log"
        for endpoint in ENDPOINTS:
            before = len(_TIMED.findall(timed_log.read_text()))
            for r in range(args.rounds):
                for name in list(servers) if r % 2 == 0 else list(servers)[::-1]:
                    server = servers[name]
                    url = server.url(f"/{endpoint}")
                    wrk(url, scripts[endpoint], connections=8, seconds=1, cpu=1)
                    cpu0 = cpu_seconds(server.child.pid)
                    _, _, _, requests = wrk(
                        url, scripts[endpoint], connections=8, seconds=args.seconds, cpu=1
                    )
                    cpu = cpu_seconds(server.child.pid) - cpu0
                    per_review.setdefault((name, endpoint), []).append(cpu / requests * 1e6)
            found = [float(us) for us, _ in _TIMED.findall(timed_log.read_text())[before:]]
            timed[endpoint] = _med(found) if found else 0.0
        for name, server in servers.items():
            if not server.child.alive():
                raise RuntimeError(f"{name} died during the run:\n{server.child.tail(20)}")
    return {
        "per_review_us": {f"{n} /{e}": v for (n, e), v in per_review.items()},
        "serve_admission_in_server_us": timed,
        "serve_admission_in_process_us": {e: in_process_us(e, b) for e, b in bodies.items()},
        "rounds": args.rounds,
        "seconds": args.seconds,
    }


def _med(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def print_report(report: dict[str, Any]) -> None:
    print(
        f"server CPU per review (µs, /proc), {report['rounds']} round(s) x {report['seconds']}s per "
        "server and endpoint, servers on CPU 0, wrk on CPU 1, 8 TLS keep-alive connections, distinct reviews"
    )
    rows: dict[str, list[float]] = report["per_review_us"]
    for endpoint in ENDPOINTS:
        floor = _med(rows[f"minimal /{endpoint}"])
        print(f"/{endpoint}")
        for name in ("minimal", *VARIANTS):
            values = rows[f"{name} /{endpoint}"]
            spread = f"{min(values):6.1f}-{max(values):6.1f}"
            med = _med(values)
            print(f"  {name:<24} median {med:6.1f}  ({spread})  over minimal {med - floor:+6.1f}")
        inside = report["serve_admission_in_server_us"][endpoint]
        alone = report["serve_admission_in_process_us"][endpoint]
        print(
            f"  serve_admission inside the server {inside:.1f} µs (thread CPU around each call), in a tight "
            f"loop in this process {alone:.1f} µs: {inside / alone if alone else 0:.2f}x"
        )


def main() -> None:
    if "--serve" in sys.argv:
        i = sys.argv.index("--serve")
        _serve(sys.argv[i + 1], sys.argv[i + 3 :])  # after `--serve VARIANT --`
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--quick", action="store_true", help="--rounds 1 --seconds 2")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    report = run(args)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(report)


if __name__ == "__main__":
    main()
