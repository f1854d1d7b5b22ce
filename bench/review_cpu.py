"""CPU per review of `serve_admission` in-process: what dsguard's own code costs, without HTTP or TLS.

The reviews: bench/webhook_load.py's node agent (distinct objects, as its --baseline sends) and the
real DaemonSets of the corpus (/work/shared/corpus/daemonsets, or --corpus DIR), each moved into the
`monitoring` namespace with the node-agent label so all 3 policies of bench/webhook_load.py match,
as CREATE reviews and as UPDATE reviews (a new image tag). 100 nodes. Every review's object carries
its uid in its images' tags (bench/webhook_load.admission_review), so the verdict memo never answers
and the image references and versions are parsed anew: the rules run every time.

    .venv/bin/python bench/review_cpu.py [--reviews 3000] [--profile] [--corpus DIR]

Prints µs of process CPU per review for /validate and /mutate (best of --passes, default 3); --profile prints
cProfile's top functions for one pass of each instead.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import sys
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
    NAMESPACE,
    POLICIES,
    UID_PLACEHOLDER,
    admission_review,
    agent_daemonset,
    make_nodes,
)
from dsguard.cluster_cache import ClusterCache  # noqa: E402
from dsguard.policy import parse_policy  # noqa: E402
from dsguard.scheduling import NodeInfo  # noqa: E402
from webhook.server import WebhookState, serve_admission  # noqa: E402

CORPUS = Path("/work/shared/corpus/daemonsets")


def corpus(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "DaemonSet":
                out.append(doc)
    return out


def _as_agent(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    meta["namespace"] = NAMESPACE
    meta.setdefault("labels", {})["app.kubernetes.io/component"] = "node-agent"
    return obj


def _retagged(obj: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(obj)
    for c in new["spec"]["template"]["spec"].get("containers", []):
        c["image"] = c["image"].rsplit(":", 1)[0] + ":9.9.9"
    return new


def _update(body: bytes, old: dict[str, Any]) -> bytes:
    doc = orjson.loads(body)
    doc["request"]["operation"] = "UPDATE"
    doc["request"]["oldObject"] = old
    return orjson.dumps(doc)


def reviews(objects: list[dict[str, Any]], count: int) -> Iterator[bytes]:
    """count review bodies, each with its own uid (in the object too: no memo hits)."""
    templates = []
    for obj in objects:
        templates.append(admission_review(obj, distinct=True))
        templates.append(_update(admission_review(_retagged(obj), distinct=True), obj))
    for i in range(count):
        uid = f"00000000-0000-4000-8000-{i:012x}".encode()
        yield templates[i % len(templates)].replace(UID_PLACEHOLDER.encode(), uid)


def state() -> WebhookState:
    cache = ClusterCache(static_policies=[parse_policy(p) for p in POLICIES])
    cache.use_static_facts([NodeInfo.from_node(n) for n in make_nodes(100)], "v1.33.4")
    return WebhookState(cache=cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=3000)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--passes", type=int, default=3, help="passes per endpoint; the best counts")
    args = ap.parse_args()
    objects = [agent_daemonset(compliant=False), agent_daemonset(compliant=True)]
    if args.corpus.is_dir():
        objects += [_as_agent(o) for o in corpus(args.corpus)]
    bodies = list(reviews(objects, args.reviews))
    print(f"{len(objects)} DaemonSets, {len(bodies)} reviews (CREATE and UPDATE), 3 policies, 100 nodes")
    for endpoint in ("validate", "mutate"):
        best = float("inf")
        for _ in range(1 if args.profile else args.passes):
            st = state()  # a fresh memo: nothing answered from an earlier pass
            prof = cProfile.Profile() if args.profile else None
            t0 = time.process_time()
            if prof:
                prof.enable()
            for body in bodies:
                status, _, _ = serve_admission(st, endpoint, body)
                if status != 200:
                    raise SystemExit(f"/{endpoint} answered {status}")
            if prof:
                prof.disable()
            best = min(best, (time.process_time() - t0) / len(bodies) * 1e6)
            if prof:
                print(f"--- /{endpoint}")
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        print(f"/{endpoint}: {best:.1f} µs CPU per review")


if __name__ == "__main__":
    main()
