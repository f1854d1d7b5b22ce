"""`dsguard webhook` and `dsguard guard` at start-up: settings that would hammer the apiserver and
bad inputs (certificate and key files, policy and node files, kubeconfig) exit 2 before anything
is served or connected to, with one line naming the flag, the file and the fix; no traceback."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from dsguard.cli import main
from tests.support.tls import TLSFiles, write_tls_files

GOOD_POLICY = """
apiVersion: dsguard.io/v1alpha1
kind: DaemonSetPolicy
metadata: {name: p}
spec: {match: {namespaces: [logging]}}
"""
INVALID_POLICY = GOOD_POLICY.replace("spec: {", "spec: {enforcement: Sometimes, ")
BROKEN_KUBECONFIG = "clusters: [\n"


@pytest.mark.parametrize("value", ["0", "500ms", "9s"])
def test_audit_resync_has_a_floor(value: str) -> None:
    result = CliRunner().invoke(main, ["guard", "--audit-resync", value])
    assert result.exit_code == 2
    assert "--audit-resync" in result.output and "at least 10s" in result.output


@pytest.fixture(autouse=True)
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No kubeconfig or service account of the machine's: what a test gives is all there is."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    return write_tls_files(tmp_path / "tls")


def webhook(tls: TLSFiles, *args: str, cert: Path | None = None, key: Path | None = None) -> Result:
    argv = ["webhook", "--tls-cert-file", str(cert or tls.cert_file)]
    argv += ["--tls-private-key-file", str(key or tls.key_file), "--port", "1", *args]
    return CliRunner().invoke(main, argv)


def assert_bad_input(result: Result, command: str, *needles: str) -> str:
    """Exit 2, one line on stderr starting `dsguard COMMAND:`, naming each needle; no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dsguard {command}: "), err
    for n in needles:
        assert n in err, err
    assert result.stdout == ""
    return err


# --- the webhook's certificate and key --------------------------------------------------------------


def test_certificate_that_is_not_pem(tls: TLSFiles, tmp_path: Path) -> None:
    bad = tmp_path / "tls.crt"
    bad.write_text("hello\n")
    err = assert_bad_input(
        webhook(tls, cert=bad), "webhook", f"--tls-cert-file {bad}: not a PEM certificate", "; fix: "
    )
    assert "dsguard certs generate" in err


def test_certificate_with_a_broken_pem_block(tls: TLSFiles, tmp_path: Path) -> None:
    bad = tmp_path / "tls.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    assert_bad_input(webhook(tls, cert=bad), "webhook", f"--tls-cert-file {bad}: not a PEM certificate (")


def test_certificate_and_key_swapped(tls: TLSFiles) -> None:
    assert_bad_input(
        webhook(tls, cert=tls.key_file, key=tls.cert_file),
        "webhook",
        f"--tls-cert-file {tls.key_file}: not a PEM certificate (it holds a private key)",
    )
    assert_bad_input(
        webhook(tls, key=tls.cert_file),
        "webhook",
        f"--tls-private-key-file {tls.cert_file}: not a PEM private key (it holds a certificate)",
    )


def test_key_of_another_certificate(tls: TLSFiles, tmp_path: Path) -> None:
    other = write_tls_files(tmp_path / "other", ca=tls.ca)
    assert_bad_input(
        webhook(tls, key=other.key_file),
        "webhook",
        f"--tls-private-key-file {other.key_file}: not the private key of the certificate in {tls.cert_file}",
        "fix: give the key and certificate of one pair",
    )


def test_encrypted_key(tls: TLSFiles, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(tls.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert_bad_input(
        webhook(tls, key=encrypted),
        "webhook",
        f"--tls-private-key-file {encrypted}: the private key is encrypted",
        "fix: decrypt it",
    )


def test_key_that_is_not_pem(tls: TLSFiles, tmp_path: Path) -> None:
    bad = tmp_path / "tls.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    needle = f"--tls-private-key-file {bad}: not a PEM private key ("
    assert_bad_input(webhook(tls, key=bad), "webhook", needle)


def test_unreadable_key(tls: TLSFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, permissions don't stop a read: fail the read itself, as EACCES would.
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == tls.key_file:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert_bad_input(
        webhook(tls),
        "webhook",
        f"--tls-private-key-file {tls.key_file}: cannot read it (Permission denied)",
        "fix: check the path and its permissions",
    )


@pytest.mark.parametrize("flag", ["--tls-cert-file", "--tls-private-key-file"])
def test_missing_certificate_or_key_file(tls: TLSFiles, tmp_path: Path, flag: str) -> None:
    missing = tmp_path / "nope.pem"
    result = webhook(tls, cert=missing) if flag == "--tls-cert-file" else webhook(tls, key=missing)
    assert result.exit_code == 2
    assert flag in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output


# --- policy, node and kubeconfig files, for both -------------------------------------------------------


def test_webhook_invalid_policy_file(tls: TLSFiles, tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(INVALID_POLICY)
    assert_bad_input(
        webhook(tls, "--policy-file", str(bad)),
        "webhook",
        f"--policy-file: invalid DaemonSetPolicy: {bad}#1: spec.enforcement",
        "Sometimes",
        "; fix: correct the DaemonSetPolicy file",
    )


def test_guard_invalid_policy_file(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(INVALID_POLICY)
    result = CliRunner().invoke(main, ["guard", "--policy-file", str(bad)])
    assert_bad_input(result, "guard", f"--policy-file: invalid DaemonSetPolicy: {bad}#1: spec.enforcement")


@pytest.mark.parametrize("command", ["webhook", "guard"])
def test_policy_file_that_is_not_yaml(tls: TLSFiles, tmp_path: Path, command: str) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("a: [b")
    args = ["--policy-file", str(bad)]
    result = webhook(tls, *args) if command == "webhook" else CliRunner().invoke(main, ["guard", *args])
    assert_bad_input(result, command, f"--policy-file: {bad}: not valid YAML")


@pytest.mark.parametrize("command", ["webhook", "guard"])
def test_policy_file_that_does_not_exist(tls: TLSFiles, tmp_path: Path, command: str) -> None:
    args = ["--policy-file", str(tmp_path / "nope.yaml")]
    result = webhook(tls, *args) if command == "webhook" else CliRunner().invoke(main, ["guard", *args])
    assert result.exit_code == 2
    assert "--policy-file" in result.output and "does not exist" in result.output


def test_webhook_nodes_file_must_hold_nodes(tls: TLSFiles, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD_POLICY)
    assert_bad_input(
        webhook(tls, "--policy-file", str(policy), "--nodes", str(policy)),
        "webhook",
        f"--nodes: {policy}#1: expected kind Node, got 'DaemonSetPolicy'",
        "kubectl get nodes -o yaml",
    )


def test_webhook_nodes_need_policy_files(tls: TLSFiles, tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("kind: NodeList\napiVersion: v1\nitems: []\n")
    result = webhook(tls, "--nodes", str(nodes))
    assert result.exit_code == 2 and "--nodes needs --policy-file" in result.output


@pytest.mark.parametrize("command", ["webhook", "guard"])
def test_kubeconfig_that_is_not_yaml(tls: TLSFiles, tmp_path: Path, command: str) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text(BROKEN_KUBECONFIG)
    args = ["--kubeconfig", str(bad)]
    result = webhook(tls, *args) if command == "webhook" else CliRunner().invoke(main, ["guard", *args])
    assert_bad_input(
        result,
        command,
        f"cannot load the Kubernetes client config from {bad}: ",
        "; fix: pass --kubeconfig FILE or set KUBECONFIG",
    )


@pytest.mark.parametrize("command", ["webhook", "guard"])
def test_kubeconfig_from_the_environment(
    tls: TLSFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text(BROKEN_KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(bad))
    result = webhook(tls) if command == "webhook" else CliRunner().invoke(main, ["guard"])
    assert_bad_input(result, command, f"cannot load the Kubernetes client config from {bad}: ")


def test_guard_without_any_kubeconfig_or_service_account() -> None:
    result = CliRunner().invoke(main, ["guard"])
    assert_bad_input(
        result, "guard", "cannot load the Kubernetes client config from the in-cluster config", "--kubeconfig"
    )


def test_the_certificate_is_checked_before_the_kubeconfig(tls: TLSFiles, tmp_path: Path) -> None:
    bad_kubeconfig = tmp_path / "kubeconfig"
    bad_kubeconfig.write_text(BROKEN_KUBECONFIG)
    assert_bad_input(
        webhook(tls, "--kubeconfig", str(bad_kubeconfig), key=tls.cert_file),
        "webhook",
        "--tls-private-key-file",
    )


@pytest.mark.parametrize("command", ["webhook", "guard"])
def test_policy_folder_with_other_kinds_is_read_and_the_skipped_are_counted(
    tls: TLSFiles, tmp_path: Path, command: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "policy.yaml").write_text(GOOD_POLICY)
    (folder / "kustomization.yaml").write_text("kind: Kustomization\nresources: [policy.yaml]\n")
    bad = tmp_path / "kubeconfig"
    bad.write_text(BROKEN_KUBECONFIG)
    args = ["--policy-file", str(folder), "--kubeconfig", str(bad)]
    caplog.set_level("INFO", logger="dsguard.cli")
    result = webhook(tls, *args) if command == "webhook" else CliRunner().invoke(main, ["guard", *args])
    # The folder is accepted: the command gets as far as the kubeconfig.
    assert result.exit_code == 2 and "cannot load the Kubernetes client config" in result.stderr
    assert "1 DaemonSetPolicy(ies) from --policy-file; 1 other document(s) skipped" in caplog.text


# --- the guard's --extra-ca-file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it (No such file or directory)"),
        (b"", "no PEM certificate in it"),
        (b"not a certificate\n", "no PEM certificate in it"),
        (
            b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
            "not a readable PEM CA certificate",
        ),
        (b"-----BEGIN CERTIFICATE-----\n" + b"A" * (1 << 20), "over 1024 KiB, not a CA bundle"),
    ],
)
def test_guard_extra_ca_file_that_cannot_be_used(tmp_path: Path, content: bytes | None, problem: str) -> None:
    ca = tmp_path / "corp-ca.pem"
    if content is not None:
        ca.write_bytes(content)
    result = CliRunner().invoke(main, ["guard", "--extra-ca-file", str(ca)])
    assert_bad_input(
        result, "guard", f"--extra-ca-file: {ca}: {problem}", "fix: give the private CA's certificates"
    )


def test_extra_ca_file_is_trusted_beside_the_system_cas(tls: TLSFiles) -> None:
    from guard.outbound_tls import outbound_ssl_context

    system = outbound_ssl_context()
    extra = outbound_ssl_context(str(tls.ca_file))
    assert "commonName', 'dsguard test CA'" in str([c["subject"] for c in extra.get_ca_certs()])
    assert len(extra.get_ca_certs()) == len(system.get_ca_certs()) + 1
    assert extra.minimum_version is ssl.TLSVersion.TLSv1_2 and extra.verify_mode is ssl.CERT_REQUIRED
