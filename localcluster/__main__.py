"""python -m localcluster up|down|status — a detached local cluster for demos and benchmarks.

    python -m localcluster up [--nodes N (default 3)] [--workdir DIR]  # last line: kubeconfig
    python -m localcluster status [--workdir DIR]
    python -m localcluster down [--workdir DIR]
    python -m localcluster image [--rebuild] [--no-import]  # dsguard's image; last line: its reference

DIR defaults to $DSGUARD_CLUSTER_DIR or <repo>/.cluster. The processes outlive `up`; pids and
ports are in DIR/state.json, logs in DIR/logs/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from localcluster.binaries import BinariesError
from localcluster.cluster import ClusterError, LocalCluster, default_workdir
from localcluster.nodes import create_nodes, node_manifest, wait_nodes_ready


def _cmd_up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir
    t0 = time.monotonic()
    cluster = LocalCluster(workdir, die_with_parent=False, startup_timeout=args.timeout)
    try:
        cluster.start()
    except (ClusterError, BinariesError) as exc:
        print(f"localcluster up failed: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic() - t0
    print(
        f"control plane ready in {started:.1f}s (apiserver {cluster.timings.apiserver:.1f}s)", file=sys.stderr
    )
    if args.nodes > 0:
        names = [f"{args.node_prefix}-{i}" for i in range(args.nodes)]
        try:
            create_nodes(cluster.kubectl, [node_manifest(n) for n in names])
            wait_nodes_ready(cluster.kubectl, names, timeout=max(60.0, args.nodes * 0.5))
        except (ClusterError, TimeoutError, OSError) as exc:
            print(f"localcluster up: nodes failed: {exc}; stopping", file=sys.stderr)
            cluster.stop()
            return 1
        print(f"{args.nodes} kwok nodes Ready", file=sys.stderr)
    print(f"server:  {cluster.server}")
    print(f"logs:    {cluster.logs_dir}")
    print(f"stop:    {sys.executable} -m localcluster down --workdir {cluster.workdir}")
    print(f"use:     export KUBECONFIG={cluster.kubeconfig}")
    print(cluster.kubeconfig)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        cluster = LocalCluster.from_state(args.workdir)
    except ClusterError as exc:
        print(f"nothing to stop: {exc}", file=sys.stderr)
        return 0
    try:
        cluster.stop(grace=args.grace)
    except ClusterError as exc:
        print(f"localcluster down: {exc}", file=sys.stderr)
        return 1
    print(f"stopped; logs kept in {cluster.logs_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        cluster = LocalCluster.from_state(args.workdir)
    except ClusterError as exc:
        print(f"not running: {exc}")
        return 1
    health = cluster.health()
    pids = cluster.component_pids()
    for name, state in health.items():
        print(f"{name:26} pid {pids[name]:<8} {state}")
    print(f"server:     {cluster.server}")
    print(f"kubeconfig: {cluster.kubeconfig}")
    return 0 if health and all(v == "ok" for v in health.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["image"]:  # its own options: localcluster/image.py
        from localcluster.image import main as image_main

        return image_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m localcluster", description="Run a local Kubernetes control plane with kwok nodes."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a detached cluster")
    up.add_argument("--nodes", type=int, default=3, help="kwok nodes to create (default 3)")
    up.add_argument("--node-prefix", default="kwok-node")
    up.add_argument("--timeout", type=float, default=120.0, help="startup deadline in seconds")
    down = sub.add_parser("down", help="stop the cluster in the workdir")
    down.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    status = sub.add_parser("status", help="show the cluster's components")
    sub.add_parser("image", help="build dsguard's image (see python -m localcluster image --help)")
    for p in (up, down, status):
        p.add_argument("--workdir", type=Path, default=default_workdir())
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    handler = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
