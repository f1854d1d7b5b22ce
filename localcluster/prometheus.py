"""A real Prometheus server for the tests of the waves' Prometheus gate, built from Go modules
(gobuild/build_prometheus.sh, pinned in gobuild/prometheus/go.mod) and started on loopback with a
static scrape configuration: the targets the test serves itself.

    with LocalPrometheus(workdir, targets=["127.0.0.1:9123"], scrape_interval="1s") as prom:
        prom.url  # http://127.0.0.1:<port>, the HTTP API a policy's gate queries
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import yaml

from localcluster.procs import Child, free_port, http_get, launch, wait_ready

GOBUILD = Path(__file__).resolve().parent / "gobuild"


def prometheus_binary() -> Path:
    """The pinned Prometheus, built into the cache on first use (a few minutes cold)."""
    out = subprocess.run(
        ["bash", str(GOBUILD / "build_prometheus.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"building Prometheus failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1]) / "prometheus"


class LocalPrometheus:
    def __init__(
        self,
        workdir: Path,
        *,
        targets: Sequence[str],
        scrape_interval: str = "1s",
        startup_timeout: float = 60.0,
    ) -> None:
        self.workdir = workdir
        self.targets = tuple(targets)
        self.scrape_interval = scrape_interval
        self.startup_timeout = startup_timeout
        self.port = 0
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        binary = prometheus_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": "test", "static_configs": [{"targets": list(self.targets)}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.child = launch(
            [
                str(binary),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log=self.workdir / "prometheus.log",
            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
            die_with_parent=True,
        )
        wait_ready(f"{self.url}/-/ready", what="Prometheus", timeout=self.startup_timeout, child=self.child)
        return self

    def query(self, promql: str) -> Any:
        """An instant query's data (for the test's own checks)."""
        from urllib.parse import quote

        status, body = http_get(f"{self.url}/api/v1/query?query={quote(promql)}")
        if status != 200:
            raise RuntimeError(f"query {promql!r}: HTTP {status} {body[:200]!r}")
        return json.loads(body)["data"]

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace=5.0)
            self.child = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
