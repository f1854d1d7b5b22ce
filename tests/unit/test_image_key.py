"""The image's content key (localcluster/image.py): what changes it, and what doesn't; and the
message when the build tools are missing."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster import image
from localcluster.image import ImageError, copy_sources, image_key

REPO = Path(__file__).resolve().parents[2]

DOCKERFILE = """ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
COPY pyproject.toml README.md ./
COPY --chown=0:0 dsguard ./dsguard
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/dsguard /opt/dsguard
"""


def make_repo(root: Path) -> Path:
    (root / "dsguard" / "rules").mkdir(parents=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    (root / ".dockerignore").write_text("*\n!dsguard/\n")
    (root / "pyproject.toml").write_text('[project]\nname = "dsguard"\nversion = "0.1.0"\n')
    (root / "README.md").write_text("# dsguard\n")
    (root / "dsguard" / "__init__.py").write_text("")
    (root / "dsguard" / "rules" / "tolerations.py").write_text("X = 1\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")
    return root


def _write(rel: str, text: str = "changed\n") -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)

    return edit


def _chmod_x(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).chmod(0o755)


CHANGES: list[tuple[str, Callable[[Path], None], bool]] = [
    ("a copied source file", _write("dsguard/rules/tolerations.py", "X = 2\n"), True),
    ("a new file in a copied directory", _write("dsguard/rules/new.py"), True),
    ("a copied file's executable bit", _chmod_x("dsguard/__init__.py"), True),
    ("a copied top-level file", _write("README.md"), True),
    ("the Dockerfile", _write("Dockerfile", DOCKERFILE + "USER 65532:65532\n"), True),
    (".dockerignore", _write(".dockerignore", "*\n"), True),
    ("pyproject.toml", _write("pyproject.toml", '[project]\nname = "dsguard"\nversion = "0.2.0"\n'), True),
    ("a test (not copied)", _write("tests/test_x.py"), False),
    ("a new top-level file (not copied)", _write("notes.txt"), False),
    (
        "bytecode in a copied directory (.dockerignore'd)",
        _write("dsguard/__pycache__/x.cpython-311.pyc"),
        False,
    ),
    ("a stray .pyc", _write("dsguard/rules/old.pyc"), False),
]


@pytest.mark.parametrize(("what", "edit", "changes_key"), CHANGES, ids=[c[0] for c in CHANGES])
def test_key_changes_with_what_the_build_reads(
    what: str, edit: Callable[[Path], None], changes_key: bool, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path)
    before = image_key(repo)
    edit(repo)
    assert (image_key(repo) != before) is changes_key, what


def test_key_is_stable() -> None:
    assert image_key(REPO) == image_key(REPO)


@pytest.mark.parametrize(
    ("dockerfile", "sources"),
    [
        (DOCKERFILE, ["pyproject.toml", "README.md", "dsguard"]),
        ("FROM x\ncopy a b ./\n", ["a", "b"]),
        ("FROM x\nCOPY --from=build /a /b\nRUN cp x y\n", []),
        (
            (REPO / "Dockerfile").read_text(),
            ["pyproject.toml", "README.md", "constraints.txt", "dsguard", "webhook", "guard", "certs"],
        ),
    ],
)
def test_copy_sources(dockerfile: str, sources: list[str]) -> None:
    assert copy_sources(dockerfile) == sources


def test_a_missing_copy_source_is_named(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    shutil.rmtree(repo / "dsguard")
    with pytest.raises(RuntimeError, match=r"Dockerfile: COPY dsguard: no such file or directory"):
        image_key(repo)


def test_missing_tools_are_named_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSGUARD_CACHE", str(tmp_path))  # an empty cache: a build is needed
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "mmdebstrap" else f"/usr/bin/{tool}")
    with pytest.raises(ImageError) as err:
        image.build_image()
    assert str(err.value) == (
        "mmdebstrap not installed: run `make image-deps` "
        "(as root: apt-get install buildah mmdebstrap runc containerd)"
    )


def test_a_build_without_root_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(
        ImageError, match=r"needs root .* docker build -t " + re.escape(f"dsguard:{image.version()} .")
    ):
        image.build_image()
