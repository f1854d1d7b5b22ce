"""The pre-commit hooks (.pre-commit-hooks.yaml), run by `pre-commit try-repo` in a temporary git
repository as a team would: denied manifests fail the commit with dsguard check's report, fixed
ones pass. `dsguard-check` installs dsguard from this repository into pre-commit's own virtualenv
(pip: PyPI for the dependencies, or pip's cache), `dsguard-check-system` uses the dsguard on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import builders

REPO = Path(__file__).resolve().parents[2]
PRE_COMMIT = Path(sys.executable).parent / "pre-commit"

POLICY = builders.policy(
    "node-agents",
    {
        "tolerations": {
            "required": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
            "onMissing": "Deny",
        },
        "rollout": {"maxUnavailable": 1, "onExceed": "Deny"},
    },
    namespaces=["logging"],
)
TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}


def team_repo(tmp_path: Path, *, tolerations: bool, max_unavailable: int) -> Path:
    """A team's repository: policies/ (with its kustomization.yaml) and deploy/, staged."""
    repo = tmp_path / "team"
    (repo / "policies").mkdir(parents=True)
    (repo / "deploy").mkdir()
    (repo / "policies" / "node-agents.yaml").write_text(yaml.safe_dump(POLICY))
    (repo / "policies" / "kustomization.yaml").write_text(
        "kind: Kustomization\nresources: [node-agents.yaml]\n"
    )
    ds = builders.daemonset(
        "fluent-bit",
        "logging",
        max_unavailable=max_unavailable,
        tolerations=[TOLERATION] if tolerations else None,
    )
    (repo / "deploy" / "fluent-bit.yaml").write_text(yaml.safe_dump(ds))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    return repo


def try_repo(repo: Path, hook: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "DSGUARD_POLICY": "policies/",  # what a team puts in the hook's args
        # the system hook runs the dsguard of this virtualenv
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [str(PRE_COMMIT), "try-repo", str(REPO), hook, "--all-files", "--verbose", "--color", "never"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.parametrize(
    ("tolerations", "max_unavailable", "passes", "says"),
    [
        (True, 1, True, "1 DaemonSet(s) checked: 1 allowed, 0 denied"),
        (
            False,
            1,
            False,
            'DaemonSetPolicy "node-agents" (tolerations): spec.template.spec.tolerations: missing',
        ),
        (True, 3, False, "spec.updateStrategy.rollingUpdate.maxUnavailable: 3 is over the cap 1"),
    ],
)
def test_system_hook(
    tmp_path: Path, tolerations: bool, max_unavailable: int, passes: bool, says: str
) -> None:
    repo = team_repo(tmp_path, tolerations=tolerations, max_unavailable=max_unavailable)
    proc = try_repo(repo, "dsguard-check-system", tmp_path)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) is passes, out
    assert ("Passed" if passes else "Failed") in out
    assert says in out
    # The policies' folder itself is among the files: its documents are skipped, not errors.
    assert "other document(s) skipped" in out


def test_python_hook_installs_dsguard_from_the_repository(tmp_path: Path) -> None:
    """Needs pip to reach PyPI (or have the dependencies in its cache): ~2 minutes the first time."""
    repo = team_repo(tmp_path, tolerations=False, max_unavailable=1)
    proc = try_repo(repo, "dsguard-check", tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "- hook id: dsguard-check" in out and "- exit code: 1" in out
    assert "DENIED DaemonSet logging/fluent-bit (deploy/fluent-bit.yaml#1)" in out
