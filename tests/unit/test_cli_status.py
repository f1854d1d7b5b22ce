"""`dsguard status` on bad input that needs no cluster: usage errors and unusable configuration
exit 2 with a one-line message naming what is wrong; no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dsguard.cli import main
from dsguard.cli.options import parse_duration
from dsguard.cli.status.render import age
from tests.support import cli as cliutil
from tests.support.cli import kubeconfig

GOOD_POLICY = """
apiVersion: dsguard.io/v1alpha1
kind: DaemonSetPolicy
metadata: {name: p}
spec: {match: {namespaces: [logging]}}
"""


@pytest.fixture
def closed_port() -> Iterator[int]:
    with cliutil.closed_port() as port:
        yield port


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["status", *args])


def assert_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, result.output
    return result.output


def test_bad_output_format() -> None:
    assert_error(run("-o", "wide"), "'wide' is not one of 'table', 'json', 'yaml'")


def test_missing_kubeconfig_file(tmp_path: Path) -> None:
    assert_error(run("--kubeconfig", str(tmp_path / "nope")), "--kubeconfig", "does not exist")


def test_kubeconfig_that_is_not_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("clusters: [\n")
    out = assert_error(run("--kubeconfig", str(bad)), "cannot load the Kubernetes client config", str(bad))
    assert "--kubeconfig" in out


def test_unknown_context(tmp_path: Path, closed_port: int) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(kubeconfig(f"https://127.0.0.1:{closed_port}"))
    assert_error(run("--kubeconfig", str(kc), "--context", "nope"), "nope", "--context")


def test_unreachable_apiserver(tmp_path: Path, closed_port: int) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(kubeconfig(f"https://127.0.0.1:{closed_port}"))
    out = assert_error(run("--kubeconfig", str(kc)), "cannot reach the apiserver", f"127.0.0.1:{closed_port}")
    assert len(out.strip().splitlines()) == 1, out


def test_policy_file_that_does_not_exist(tmp_path: Path) -> None:
    assert_error(run("--policy-file", str(tmp_path / "nope.yaml")), "--policy-file", "does not exist")


def test_invalid_policy_file_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(GOOD_POLICY.replace("spec: {", "spec: {enforcement: Sometimes, "))
    out = assert_error(run("--policy-file", str(bad)), str(bad), "spec.enforcement", "Sometimes")
    assert len(out.strip().splitlines()) == 1, out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--timeout", "30s"], "--timeout needs --until-done"),
        (["--until-done", "--timeout", "soon"], "'soon' is not a duration"),
        (["--watch", "--interval", "0"], "--interval"),
        (["--until-done", "--timeout", "0s"], "--timeout"),
        (["a", "b"], "unexpected extra argument"),
    ],
)
def test_bad_flags(args: list[str], needle: str) -> None:
    assert_error(run(*args), needle)


def test_help_lists_the_flags() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for flag in ("--kubeconfig", "--context", "--namespace", "--all-namespaces", "--output", "--policy-file",
                 "--watch", "--interval", "--until-done", "--timeout"):  # fmt: skip
        assert flag in result.output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("1.5s", 1.5), ("5m", 300.0), ("1h30m", 5400.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "1m-2s", "-5s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (45, "45s"), (192, "3m12s"), (900, "15m"), (7500, "2h5m"), (273600, "3d4h")],
)
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text
