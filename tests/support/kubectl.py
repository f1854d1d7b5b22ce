"""kubectl for the cluster tests, beyond LocalCluster.kubectl/kubectl_json."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from localcluster.cluster import LocalCluster

Obj = dict[str, Any]


def as_list(docs: Sequence[Mapping[str, Any]]) -> str:
    """A v1 List of docs, as JSON: one `kubectl apply -f -` for several objects."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})


def apply(
    cluster: LocalCluster, obj: Mapping[str, Any], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply -f - ARGS` of obj (client-side apply, as a user runs it)."""
    return cluster.kubectl("apply", "-f", "-", *args, input=json.dumps(obj), check=check)


def watch_objects(proc: subprocess.Popen[str]) -> Iterator[Obj]:
    """The objects `kubectl get ... --watch -o json` prints, one per version, as they come."""
    assert proc.stdout is not None
    buf: list[str] = []
    for line in proc.stdout:
        buf.append(line)
        if line.rstrip("\n") == "}":  # kubectl ends each top-level object with "}" alone
            yield json.loads("".join(buf))
            buf = []


class Watch:
    """`kubectl get ARGS --watch -o json` read by a thread into a queue (`events`; None once the
    watch ended). close() ends it."""

    def __init__(self, cluster: LocalCluster, *args: str) -> None:
        self.proc = cluster.kubectl_popen("get", *args, "--watch", "-o", "json")
        self.events: queue.Queue[Obj | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, name=f"watch-{'-'.join(args)}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for obj in watch_objects(self.proc):
            self.events.put(obj)
        self.events.put(None)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
