"""Fuzz `dsguard webhook` as a hostile client would: seeded reviews against the real server process.

Starts `dsguard webhook` (the load benchmark's policies and nodes, TLS from a throwaway CA,
loopback; localcluster.static_webhook) and sends --count cases (default 100,000) over keep-alive
TLS connections, --concurrency at a time. Case i is generated from (--seed, i) alone, in one of
four classes:

- valid: variations of real DaemonSet reviews (CREATE and UPDATE, namespaces, caps, tolerations,
  images, node affinity, a guard pause), the answer must be 200;
- wrong-type: one value anywhere in a valid review (envelope, object, oldObject) replaced by a
  value of another type or an unparseable one (percentages, huge numbers, long strings);
- deep: one value replaced by arrays/objects nested 50 to 1,100 levels deep;
- protocol: Content-Encoding gzip/deflate not matching the body (and one that does), a wrong or
  missing Content-Type, a body that isn't JSON, a Content-Length shorter or longer than the body,
  a Content-Length over the limit, a bad chunked body, a malformed header, another method or path.

Prints the counts by class and HTTP status, the 5xx (must be 0) and the 200s that didn't echo the
uid (must be 0), tracebacks in the server log, the server's RSS before and after, and throughput.
`--replay INDEX` sends case INDEX alone and prints the request and the answer.

    .venv/bin/python bench/fuzz_webhook.py [--count 100000] [--seed 13] [--concurrency 8]
    .venv/bin/python bench/fuzz_webhook.py --replay 4242
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import gzip
import json
import random
import re
import ssl
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.webhook_load import AGENT_IMAGE, POLICIES, agent_daemonset, make_nodes  # noqa: E402
from localcluster.static_webhook import StaticWebhook  # noqa: E402
from tests.support.json_paths import json_paths  # noqa: E402

CLASSES = ("valid", "wrong-type", "deep", "protocol")
WEIGHTS = (30, 40, 10, 20)
READ_TIMEOUT_S = 2  # the server's --read-timeout: a body shorter than its Content-Length waits this
_DEEP = re.compile(rb'"@deep:([0-9]+):([ao])@"')


# --- cases ----------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    cls: str
    kind: str  # what was done, for the replay
    method: str = "POST"
    path: str = "/validate"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    body: bytes = b""
    uid: str | None = None  # the uid a 200 must echo
    content_length: int | None = None  # None: len(body); else sent as is (may lie)
    raw_head: bytes | None = None  # a malformed head, sent instead of the one built

    def wire(self) -> bytes:
        if self.raw_head is not None:
            return self.raw_head + self.body
        headers = dict(self.headers)
        if "Transfer-Encoding" not in headers:
            headers["Content-Length"] = str(
                len(self.body) if self.content_length is None else self.content_length
            )
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: dsguard\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode() + b"\r\n" + self.body

    @property
    def keeps_connection(self) -> bool:
        """A well-formed request the server answers and keeps the connection for."""
        return self.cls != "protocol"


def _wire_json(doc: Any) -> bytes:
    """JSON with the deep placeholders expanded (orjson won't write them; json writes any int)."""
    text = json.dumps(doc, separators=(",", ":")).encode()

    def expand(m: re.Match[bytes]) -> bytes:
        n, kind = int(m[1]), m[2]
        if kind == b"a":
            return b"[" * n + b"1" + b"]" * n
        return b'{"a":' * n + b"1" + b"}" * n

    return _DEEP.sub(expand, text)


def _review(
    obj: dict[str, Any], *, old: dict[str, Any] | None, uid: str, rnd: random.Random
) -> dict[str, Any]:
    meta = obj["metadata"]
    kind = {"group": "apps", "version": "v1", "kind": "DaemonSet"}
    resource = {"group": "apps", "version": "v1", "resource": "daemonsets"}
    request: dict[str, Any] = {
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": meta["name"],
        "namespace": meta["namespace"],
        "operation": "UPDATE" if old is not None else "CREATE",
        "userInfo": {
            "username": rnd.choice(["alice", "system:serviceaccount:argocd:argocd-application-controller"])
        },
        "object": obj,
        "oldObject": old,
        "dryRun": rnd.random() < 0.1,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _valid_review(rnd: random.Random, uid: str) -> dict[str, Any]:
    obj = agent_daemonset(compliant=rnd.random() < 0.5)
    meta, spec = obj["metadata"], obj["spec"]
    pod = spec["template"]["spec"]
    meta["namespace"] = rnd.choice(["monitoring", "logging", "kube-system", "sandbox"])
    rolling = spec["updateStrategy"]["rollingUpdate"]
    if rnd.random() < 0.5:
        rolling["maxUnavailable"] = rnd.choice([1, 2, 5, 0, "1%", "10%", "25%", "100%", "007%"])
        rolling["maxSurge"] = 0 if rolling["maxUnavailable"] not in (0, "0%") else rnd.choice([1, "5%"])
    if rnd.random() < 0.2:
        spec["updateStrategy"] = {"type": "OnDelete"}
    if rnd.random() < 0.3:
        pod["tolerations"] = rnd.sample(pod["tolerations"], k=rnd.randint(0, len(pod["tolerations"])))
    if rnd.random() < 0.3:
        pod["containers"][0]["image"] = (
            f"{AGENT_IMAGE}:{rnd.choice(['7.52.1', '7.40.0', '8.1.0', 'latest', ''])}"
        )
    if rnd.random() < 0.2:
        op = rnd.choice(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"])
        values = {"Exists": None, "DoesNotExist": None}.get(op, [str(rnd.randint(0, 10))])
        req: dict[str, Any] = {"key": "node.kubernetes.io/instance-type", "operator": op}
        if values is not None:
            req["values"] = values
        pod["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [req]}]}}
        }  # fmt: skip
    if rnd.random() < 0.2:
        spec["minReadySeconds"] = rnd.randint(0, 600)
    old = None
    if rnd.random() < 0.4:
        old = copy.deepcopy(obj)
        if rnd.random() < 0.5:
            old["spec"]["template"]["spec"]["containers"][0]["image"] = f"{AGENT_IMAGE}:7.50.0"
        if rnd.random() < 0.3:  # a rollout the guard paused, re-applied
            old["metadata"]["annotations"]["dsguard.io/paused"] = "true"
            old["spec"]["updateStrategy"] = {"type": "OnDelete"}
            obj["metadata"]["annotations"]["dsguard.io/paused"] = "true"
    return _review(obj, old=old, uid=uid, rnd=rnd)


def _put(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


_HUGE = "@huge@"


def _wrong_value(rnd: random.Random) -> Any:
    makers: list[Callable[[], Any]] = [
        lambda: None,
        lambda: True,
        lambda: 0,
        lambda: -1,
        lambda: 2**31,
        lambda: 2**63,
        lambda: 2**70,
        lambda: 1.5,
        lambda: 1e308,
        lambda: "",
        lambda: "x",
        lambda: "5% ",
        lambda: "%%",
        lambda: "10.5%",
        lambda: "abc",
        lambda: "5%\n",
        lambda: "101%",
        lambda: "-5%",
        lambda: "\u00b2%",
        lambda: "0" * 300 + "5%",
        lambda: "9" * rnd.randint(20, 6000),
        lambda: "é" * rnd.randint(1, 2000),
        lambda: [],
        lambda: {},
        lambda: [1, "a", None],
        lambda: {"a": 1},
        lambda: [{}],
        lambda: {"": None},
        lambda: _HUGE,
    ]
    return rnd.choice(makers)()


def _deep_value(rnd: random.Random) -> str:
    return f"@deep:{rnd.randint(50, 1100)}:{rnd.choice('ao')}@"


PROTOCOL_KINDS = (
    "gzip-plain", "deflate-plain", "gzip-ok", "deflate-garbage", "text-plain", "no-content-type", "not-json",
    "truncated-json", "empty", "length-short", "length-long", "length-over-limit", "chunked-bad",
    "header-garbage", "get", "wrong-path", "binary",
)  # fmt: skip
_BAD_HEADS = (
    b"POST /validate HTTP/1.1\r\nHost dsguard\r\n\r\n",
    b"POST /validate HTTP/9.9\r\n\r\n",
    b"POST  HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01garbage\r\n\r\n",
    b"POST /validate HTTP/1.1\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
    b"POST /validate HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
)


def _protocol_case(rnd: random.Random, case: Case, review: bytes) -> None:
    kind = rnd.choice(PROTOCOL_KINDS)
    case.kind = kind
    case.body = review
    h = case.headers
    h["Connection"] = "close"
    if kind == "gzip-plain":
        h["Content-Encoding"] = "gzip"
    elif kind == "deflate-plain":
        h["Content-Encoding"] = "deflate"
    elif kind == "gzip-ok":  # a valid compressed review: answered like any other
        h["Content-Encoding"] = "gzip"
        case.body = gzip.compress(review)
    elif kind == "deflate-garbage":
        h["Content-Encoding"] = "deflate"
        case.body = zlib.compress(review)[: rnd.randint(1, 40)] + rnd.randbytes(rnd.randint(0, 100))
    elif kind == "text-plain":
        h["Content-Type"] = "text/plain"
    elif kind == "no-content-type":
        del h["Content-Type"]
    elif kind == "not-json":
        case.body = rnd.choice(
            [b"{", b"[1,2", b"null", b"true", b"\xff\xfe", b"AdmissionReview", b"{'a': 1}"]
        )
    elif kind == "truncated-json":
        case.body = review[: rnd.randint(0, len(review) - 1)]
    elif kind == "empty":
        case.body = b""
    elif kind == "length-short":
        case.content_length = rnd.randint(0, len(review) - 1)
    elif kind == "length-long":
        case.content_length = len(review) + rnd.randint(1, 1000)
    elif kind == "length-over-limit":
        case.content_length = 8 * 1024 * 1024
        case.body = b"{}"
    elif kind == "chunked-bad":
        h["Transfer-Encoding"] = "chunked"
        case.body = rnd.choice(
            [b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{}\r\n0\r\n\r\n", b"-1\r\n\r\n", b"2\r\n{}0\r\n\r\n"]
        )
    elif kind == "header-garbage":
        case.raw_head = rnd.choice(_BAD_HEADS)
        case.body = b""
    elif kind == "get":
        case.method = "GET"
        case.body = b""
    elif kind == "wrong-path":
        case.path = rnd.choice(["/", "/mutate/", "/validate?x=1#y", "/%00", "/" + "a" * 5000])
    elif kind == "binary":
        case.body = rnd.randbytes(rnd.randint(1, 4000))


def make_case(seed: int, index: int) -> Case:
    rnd = random.Random(f"{seed}:{index}")  # a str seed: the same case on every run and machine
    cls = rnd.choices(CLASSES, WEIGHTS)[0]
    uid = f"fuzz-{seed}-{index}"
    case = Case(index, cls, cls, path=rnd.choice(["/validate", "/mutate"]))
    doc = _valid_review(rnd, uid)
    if cls == "valid":
        case.body, case.uid = _wire_json(doc), uid
    elif cls in ("wrong-type", "deep"):
        paths = list(json_paths(doc))
        # Most of them where the rules read: the object's spec and metadata.
        inside = [
            p for p in paths if p[:2] == ("request", "object") and len(p) > 2 and p[2] in ("spec", "metadata")
        ]
        path = rnd.choice(inside if rnd.random() < 0.6 else paths)
        value = _wrong_value(rnd) if cls == "wrong-type" else _deep_value(rnd)
        doc = _put(doc, path, value)
        case.kind = f"{cls} at {'.'.join(map(str, path)) or '(root)'}: {str(value)[:60]}"
        case.body = _wire_json(doc).replace(f'"{_HUGE}"'.encode(), b"9" * 5000)
        request = doc.get("request") if isinstance(doc, dict) else None
        case.uid = (
            request.get("uid") if isinstance(request, dict) and isinstance(request.get("uid"), str) else None
        )
    else:
        _protocol_case(rnd, case, _wire_json(doc))
    return case


# --- sending --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: the connection closed without an answer
    headers: dict[str, str]
    body: bytes


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    line = await reader.readline()
    if not line:
        return Answer(0, {}, b"")
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.read()
    return Answer(status, headers, body)


class Connection:
    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        if self.streams is not None:
            writer = self.streams[1]
            self.streams = None
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def send(self, case: Case) -> Answer:
        if self.streams is None:
            self.streams = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.context, server_hostname="127.0.0.1"
            )
        reader, writer = self.streams
        try:
            writer.write(case.wire())
            await writer.drain()
            answer = await asyncio.wait_for(_read_answer(reader), READ_TIMEOUT_S + 10)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError, IndexError):
            answer = Answer(0, {}, b"")
        if not case.keeps_connection or answer.status == 0 or answer.headers.get("connection") == "close":
            await self.close()
        return answer


@dataclass
class Tally:
    by_class: Counter[tuple[str, int]] = field(default_factory=Counter)
    uid_mismatch: list[int] = field(default_factory=list)
    server_errors: list[int] = field(default_factory=list)
    done: int = 0


def _echoes(case: Case, answer: Answer) -> bool:
    if case.uid is None or answer.status != 200:
        return True
    try:
        return bool(json.loads(answer.body)["response"]["uid"] == case.uid)
    except (ValueError, KeyError, TypeError):
        return False


async def _worker(
    port: int, context: ssl.SSLContext, seed: int, indices: Iterator[int], tally: Tally
) -> None:
    conn = Connection(port, context)
    try:
        for i in indices:
            case = make_case(seed, i)
            answer = await conn.send(case)
            tally.by_class[(case.cls, answer.status)] += 1
            if answer.status >= 500:
                tally.server_errors.append(i)
            if not _echoes(case, answer):
                tally.uid_mismatch.append(i)
            tally.done += 1
    finally:
        await conn.close()


async def _progress(tally: Tally, count: int) -> None:
    start = time.monotonic()
    while True:
        await asyncio.sleep(10)
        rate = tally.done / (time.monotonic() - start)
        print(
            f"  ... {tally.done}/{count} cases, {rate:.0f}/s, 5xx so far: {len(tally.server_errors)}",
            flush=True,
        )


def _webhook(workdir: Path) -> StaticWebhook:
    return StaticWebhook(
        workdir, policies=POLICIES, nodes=make_nodes(100), extra_args=["--read-timeout", f"{READ_TIMEOUT_S}s"]
    )


async def fuzz(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dsguard-fuzz-") as tmp, _webhook(Path(tmp)) as server:
        context = server.client_context()
        # Warm up on valid cases of another seed, then measure.
        await _worker(server.port, context, args.seed + 1, iter(range(300)), Tally())
        rss_before = server.rss_bytes()
        tally = Tally()
        indices = iter(range(args.count))
        progress = asyncio.create_task(_progress(tally, args.count))
        start = time.monotonic()
        await asyncio.gather(
            *(_worker(server.port, context, args.seed, indices, tally) for _ in range(args.concurrency))
        )
        elapsed = time.monotonic() - start
        progress.cancel()
        rss_after = server.rss_bytes()
        log = server.log_path.read_text(errors="replace")
    tracebacks = log.count("Traceback")
    print(
        f"dsguard webhook fuzzed: {tally.done} cases (seed {args.seed}) over TLS, {args.concurrency} "
        f"connections, in {elapsed:.1f}s: {tally.done / elapsed:.0f} cases/s"
    )
    statuses = sorted({s for _, s in tally.by_class})
    print(f"{'class':<11}" + "".join(f"{s or 'closed':>8}" for s in statuses) + f"{'total':>8}")
    for cls in CLASSES:
        counts = [tally.by_class[(cls, s)] for s in statuses]
        print(f"{cls:<11}" + "".join(f"{n:>8}" for n in counts) + f"{sum(counts):>8}")
    print(f"5xx: {len(tally.server_errors)} (must be 0); the first: {tally.server_errors[:10]}")
    missing = tally.uid_mismatch
    print(f"200 without the request's uid: {len(missing)} (must be 0); the first: {missing[:10]}")
    print(f"tracebacks in the server log: {tracebacks}")
    print(
        f"server RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after "
        f"({(rss_after - rss_before) / 2**20:+.1f} MiB)"
    )
    return 1 if tally.server_errors or tally.uid_mismatch or tracebacks else 0


async def replay(args: argparse.Namespace) -> int:
    case = make_case(args.seed, args.replay)
    wire = case.wire()
    print(f"case {case.index} (seed {args.seed}): class {case.cls}: {case.kind}")
    print(f"request ({len(wire)} bytes): {wire[:600]!r}{' ...' if len(wire) > 600 else ''}")
    with tempfile.TemporaryDirectory(prefix="dsguard-fuzz-") as tmp, _webhook(Path(tmp)) as server:
        conn = Connection(server.port, server.client_context())
        answer = await conn.send(case)
        await conn.close()
    print(f"answer: HTTP {answer.status or '(connection closed)'} {answer.headers}")
    body = answer.body
    with contextlib.suppress(ValueError, KeyError, TypeError):
        patch = json.loads(body)["response"].get("patch")
        if patch:
            print(f"patch: {base64.b64decode(patch).decode()}")
    print(body[:2000].decode(errors="replace"))
    return 1 if answer.status >= 500 else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="2,000 cases")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replay", type=int, default=None, metavar="INDEX", help="send case INDEX alone")
    args = parser.parse_args()
    if args.quick:
        args.count = 2000
    sys.exit(asyncio.run(replay(args) if args.replay is not None else fuzz(args)))


if __name__ == "__main__":
    main()
