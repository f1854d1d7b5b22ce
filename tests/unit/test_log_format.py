"""`--log-format json` of the long-running commands: one JSON object per line with time, level,
logger, message and the Kubernetes object the line is about; text stays the default. The
formatter table-driven, then `dsguard webhook` as a process, judging a review over HTTPS."""

from __future__ import annotations

import io
import json
import logging
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dsguard.cli import main
from dsguard.cli.options import log_handler
from dsguard.log_context import ObjectFilter, ObjectRef, about, object_extra
from guard.notify.alert import Alert, AlertKind
from guard.notify.dispatch import AlertDispatcher
from localcluster.procs import free_port
from tests.support import builders
from tests.support.polling import poll
from tests.support.tls import write_tls_files

REPO = Path(__file__).resolve().parents[2]
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
DS = ObjectRef.of("DaemonSet", "logging/fluent-bit")


def emit(log_format: str, action: Callable[[logging.Logger], None]) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.{log_format}")
    logger.propagate = False
    logger.handlers = [log_handler(log_format, stream)]
    logger.setLevel(logging.DEBUG)
    action(logger)
    return stream.getvalue()


def in_context(log: logging.Logger) -> None:
    with about(DS):
        log.warning("%s: paused", "logging/fluent-bit")


def boom(log: logging.Logger) -> None:
    try:
        raise ValueError("bad annotation")
    except ValueError:
        log.exception("evaluation failed")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            lambda log: log.info("serving on %s", ":8443"),
            {"level": "INFO", "message": "serving on :8443", "object": None},
        ),
        (
            in_context,
            {
                "level": "WARNING",
                "message": "logging/fluent-bit: paused",
                "object": {"kind": "DaemonSet", "namespace": "logging", "name": "fluent-bit"},
            },
        ),
        (
            lambda log: log.warning(
                "lease lost", extra=object_extra(ObjectRef("Lease", "dsguard-guard", "dsguard"))
            ),
            {
                "message": "lease lost",
                "object": {"kind": "Lease", "namespace": "dsguard", "name": "dsguard-guard"},
            },
        ),
        (
            lambda log: log.info(
                "cluster-scoped", extra=object_extra(ObjectRef.of("DaemonSetPolicy", "node-agents"))
            ),
            {"object": {"kind": "DaemonSetPolicy", "name": "node-agents"}},
        ),
        (boom, {"level": "ERROR", "message": "evaluation failed", "object": None}),
    ],
)
def test_json_lines(action: Callable[[logging.Logger], None], expected: dict[str, Any]) -> None:
    out = emit("json", action)
    (line,) = out.splitlines()
    doc = json.loads(line)
    assert doc == {**doc, **expected}
    assert TIME.fullmatch(doc["time"]), doc["time"]
    assert doc["logger"] == "test.json"
    assert set(doc) <= {"time", "level", "logger", "message", "object", "exception"}
    if doc["level"] == "ERROR":
        assert "ValueError: bad annotation" in doc["exception"]


def test_text_is_the_default_and_unchanged() -> None:
    out = emit("text", in_context)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING test.text: logging/fluent-bit: paused\n", out
    )


def test_the_context_ends_with_the_block() -> None:
    def action(log: logging.Logger) -> None:
        with about(DS):
            log.info("inside")
        log.info("after")

    inside, after = (json.loads(line) for line in emit("json", action).splitlines())
    assert inside["object"] is not None and after["object"] is None


@pytest.mark.parametrize("command", ["webhook", "guard", "certs run"])
def test_every_long_running_command_has_the_flag(command: str) -> None:
    result = CliRunner().invoke(main, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "--log-format [text|json]" in result.output


def test_webhook_process_logs_json_lines(tmp_path: Path) -> None:
    """The real process: its start, a denied review (with the DaemonSet as `object`), its end."""
    tls = write_tls_files(tmp_path / "tls")
    policy = builders.policy(
        "caps", {"rollout": {"maxUnavailable": 1, "onExceed": "Deny"}}, namespaces=["logging"]
    )
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    nodes = {"apiVersion": "v1", "kind": "List", "items": [builders.node(f"n{i}") for i in range(3)]}
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(nodes))
    port = free_port()
    argv = [
        sys.executable, "-m", "dsguard.cli", "webhook", "--log-format", "json",
        "--tls-cert-file", str(tls.cert_file), "--tls-private-key-file", str(tls.key_file),
        "--host", "127.0.0.1", "--port", str(port),
        "--policy-file", str(tmp_path / "policy.yaml"), "--nodes", str(tmp_path / "nodes.yaml"),
    ]  # fmt: skip
    log_path = tmp_path / "webhook.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        poll(ready, timeout=30, what="the webhook to be ready")
        ds = builders.daemonset("fluent-bit", "logging", max_unavailable=3)
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "operation": "CREATE", "namespace": "logging", "name": "fluent-bit",
                "object": ds,
                "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
                "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
                "userInfo": {"username": "alice"},
            },
        }  # fmt: skip
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/validate",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=ctx, timeout=5) as r:  # noqa: S310 - https, ours
            assert json.loads(r.read())["response"]["allowed"] is False
        poll(lambda: "denied DaemonSet" in log_path.read_text(), timeout=10, what="the denial logged")
    finally:
        proc.terminate()
        proc.wait(timeout=15)  # the log file is complete once the process has exited
    lines = log_path.read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "object"} <= set(d) for d in docs), lines
    denied = next(d for d in docs if d["message"].startswith("denied DaemonSet logging/fluent-bit"))
    assert denied["object"] == {"kind": "DaemonSet", "namespace": "logging", "name": "fluent-bit"}
    assert denied["logger"] == "dsguard.webhook" and denied["level"] == "INFO"
    assert any(d["message"] == "1 DaemonSetPolicy(ies) from --policy-file" for d in docs), lines
    assert any(d["message"].startswith("serving on https://127.0.0.1:") for d in docs), lines


class _Sink:
    name = "s"

    async def send(self, alert: Alert) -> None:
        logging.getLogger("dsguard.guard.notify.test").info("sent %s", alert.key)


class _Recorder:
    async def delivery_failed(self, alert: Alert, sink: str, error: str) -> None:
        return None


def _alert(namespace: str, name: str) -> Alert:
    return Alert(AlertKind.PAUSED, namespace, name, f"uid-{name}", "r1", "paused")


async def test_alert_lines_are_about_the_alerts_daemonset_not_the_one_that_started_the_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sender tasks start inside the guard's decision for one DaemonSet (copying its log
    context); each delivery's lines must name the alert's own DaemonSet."""
    caplog.set_level(logging.INFO, logger="dsguard.guard.notify.test")
    caplog.handler.addFilter(ObjectFilter())
    d = AlertDispatcher([_Sink()], recorder=_Recorder())
    with about(ObjectRef.of("DaemonSet", "a/first")):
        await d.start()
        d.submit(_alert("a", "first"))
    d.submit(_alert("b", "second"))
    await d.wait_idle(5)
    await d.close(1)
    objects = [getattr(r, "object", None) for r in caplog.records if r.name == "dsguard.guard.notify.test"]
    assert objects == [
        {"kind": "DaemonSet", "namespace": "a", "name": "first"},
        {"kind": "DaemonSet", "namespace": "b", "name": "second"},
    ]
