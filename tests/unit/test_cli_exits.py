"""One exit-code table for every command (dsguard/cli/exits.py, README "Exit codes"): 0 ok, 1 found
a problem, 2 bad input; bad input is one line, `dsguard COMMAND: WHAT: PROBLEM; fix: HOW`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from certs.issue import new_ca
from dsguard.cli import exits, main
from tests.support import cli as cliutil
from tests.support.cli import kubeconfig


@pytest.fixture(autouse=True)
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def unreachable(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig whose apiserver refuses connections."""
    with cliutil.closed_port() as port:
        path = tmp_path / "unreachable.kubeconfig"
        path.write_text(kubeconfig(f"https://127.0.0.1:{port}"))
        yield path


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.kubeconfig"
    path.write_text("clusters: [\n")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_bad_input(result: Result, command: str, *needles: str) -> str:
    assert result.exit_code == exits.BAD_INPUT, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dsguard {command}: "), err
    for n in needles:
        assert n in err, err
    return err


def test_the_table() -> None:
    assert (exits.OK, exits.PROBLEM, exits.BAD_INPUT, exits.INTERRUPTED) == (0, 1, 2, 130)


def test_one_line() -> None:
    text = "invalid DaemonSetPolicy:\n  p.yaml#1: spec.a: bad\n  p.yaml#2: spec.b: bad\n"
    assert exits.one_line(text) == "invalid DaemonSetPolicy: p.yaml#1: spec.a: bad; p.yaml#2: spec.b: bad"
    assert exits.one_line("one line") == "one line"


# --- resume / rollback ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["resume", "rollback"])
def test_manual_actions_on_an_unreachable_cluster(unreachable: Path, command: str) -> None:
    assert_bad_input(
        invoke(command, "logging/agent", "--kubeconfig", str(unreachable)),
        command,
        "cannot reach the apiserver",
        "; fix: check that the cluster is up",
    )


@pytest.mark.parametrize("command", ["resume", "rollback"])
def test_manual_actions_with_a_broken_kubeconfig(broken: Path, command: str) -> None:
    assert_bad_input(
        invoke(command, "logging/agent", "--kubeconfig", str(broken)),
        command,
        f"cannot load the Kubernetes client config from {broken}",
        "fix: pass --kubeconfig FILE",
    )


@pytest.mark.parametrize("command", ["resume", "rollback"])
def test_manual_actions_need_namespace_and_name(command: str) -> None:
    result = invoke(command, "agent")
    assert result.exit_code == exits.BAD_INPUT
    assert "expected NAMESPACE/NAME" in result.output


# --- certs ----------------------------------------------------------------------------------------


def test_certs_generate_over_existing_files_is_bad_input(tmp_path: Path) -> None:
    args = ["certs", "generate", "--service", "s", "--namespace", "n", "--out-dir", str(tmp_path / "out")]
    assert invoke(*args).exit_code == exits.OK
    err = assert_bad_input(invoke(*args), "certs generate", "already exist", "; fix: pass --force to replace")
    assert "--reuse-ca" in err
    err = assert_bad_input(invoke(*args, "--reuse-ca"), "certs generate", "already exist", "--force")
    assert "--reuse-ca" not in err


def test_certs_generate_reuse_ca_without_a_ca(tmp_path: Path) -> None:
    args = ["certs", "generate", "--service", "s", "--namespace", "n", "--out-dir", str(tmp_path)]
    assert_bad_input(invoke(*args, "--reuse-ca"), "certs generate", str(tmp_path / "ca.crt"))


def test_certs_generate_bad_ip(tmp_path: Path) -> None:
    args = ["certs", "generate", "--service", "s", "--namespace", "n", "--out-dir", str(tmp_path)]
    assert_bad_input(invoke(*args, "--ip", "300.1.1.1"), "certs generate", "300.1.1.1")
    assert list(tmp_path.iterdir()) == []


def test_certs_inject_on_an_unreachable_cluster_or_with_a_broken_kubeconfig(
    tmp_path: Path, unreachable: Path, broken: Path
) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(new_ca().cert_pem)
    args = ["certs", "inject", "--ca-file", str(ca_file), "--webhook-configuration", "dsguard-mutate"]
    assert_bad_input(invoke(*args, "--kubeconfig", str(unreachable)), "certs inject", "dsguard-mutate")
    assert_bad_input(
        invoke(*args, "--kubeconfig", str(broken)), "certs inject", "cannot load the Kubernetes client config"
    )


def test_certs_run_with_a_broken_kubeconfig(broken: Path) -> None:
    args = ["certs", "run", "--service", "s", "--namespace", "n", "--webhook-configuration", "x"]
    for mode in ("--once", "--dry-run"):
        assert_bad_input(
            invoke(*args, mode, "--kubeconfig", str(broken)),
            "certs run",
            "cannot load the Kubernetes client config",
        )


def test_certs_run_once_on_an_unreachable_cluster_is_a_failed_round(unreachable: Path) -> None:
    """`certs run` reports the API errors of its round (it retries them when looping): exit 1."""
    args = ["certs", "run", "--service", "s", "--namespace", "n", "--webhook-configuration", "x"]
    for mode in ("--once", "--dry-run"):
        result = invoke(*args, mode, "--kubeconfig", str(unreachable))
        assert result.exit_code == exits.PROBLEM, result.output
        assert "Traceback" not in result.output


# --- the offline commands -------------------------------------------------------------------------


def test_check_bad_input_names_the_flag(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("a: [b")
    ds = tmp_path / "ds.yaml"
    ds.write_text("kind: DaemonSet\napiVersion: apps/v1\nmetadata: {name: x}\n")
    assert_bad_input(
        invoke("check", "--policy", str(policy), str(ds)), "check", f"--policy: {policy}: not valid YAML"
    )
    # A manifest given as the policy: nothing in it is a DaemonSetPolicy.
    assert_bad_input(
        invoke("check", "--policy", str(ds), str(tmp_path / "missing.yaml")),
        "check",
        f"--policy: {ds}: no DaemonSetPolicy found; 1 other document(s) skipped ({ds}#1 DaemonSet)",
    )


def test_upgrade_check_unreachable_cluster(unreachable: Path) -> None:
    assert_bad_input(
        invoke("upgrade-check", "--to", "1.35", "--kubeconfig", str(unreachable)),
        "upgrade-check",
        "cannot reach the apiserver",
        "; fix: check that the cluster is up",
    )
