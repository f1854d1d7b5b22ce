"""dsguard's container image, built here from the project's own Dockerfile (``make image``).

No registry and no container engine are needed (nor used):

- the base image given to the Dockerfile's ``ARG PYTHON_IMAGE`` is Debian bookworm made locally
  with ``mmdebstrap`` (minbase + python3, python3-venv, ca-certificates: :data:`BASE_RECIPE`),
  packed as an OCI archive;
- the builder is Debian's ``buildah`` reading the Dockerfile itself (chroot isolation, vfs
  storage in ``~/.cache/dsguard/buildah``). The Dockerfile's RUN steps reach PyPI, whose TLS is
  only trusted with the host's CA bundle: it is bind-mounted over the base's bundle for the build
  only (Debian's pip reads the system bundle), so the image users get keeps Debian's own.
- the result is a docker-archive tar tagged ``docker.io/library/dsguard:<version>`` (the name CRI
  normalises ``dsguard:<version>`` to), ready for ``ctr -n k8s.io images import`` or ``docker load``.

Both archives are cached in ``~/.cache/dsguard/images`` by a content key: the base's by
:data:`BASE_RECIPE`, the image's by that, the Dockerfile, ``.dockerignore``, pyproject.toml and
every file the Dockerfile's COPY steps take. A second build with nothing changed costs well
under a second.

The interface for Python callers (the real node imports the image into its containerd)::

    from localcluster.image import build_image, import_image
    image = build_image()        # BuiltImage; cached by content key
    image.ref                    # "dsguard:0.1.0": as the manifests and the chart's image.repository/tag say
    image.cri_ref                # "docker.io/library/dsguard:0.1.0": the archive's tag (CRI's name for ref)
    image.archive                # Path of the docker-archive tar
    import_image(image, address) # ctr --address ADDRESS -n k8s.io images import ARCHIVE
    latest_image()               # the archive built or used last, without building (None if none)

and the hook for a running local cluster: when ``<cluster dir>/state.json`` (``$DSGUARD_CLUSTER_DIR``,
default ``.cluster``) has a ``"containerd_address"`` (the real node's containerd socket),
``make image`` / ``python -m localcluster image`` import the image there too
(:func:`import_into_cluster`). A real node that starts later imports the archive of
:func:`build_image` (a cache hit when the sources are unchanged) or of :func:`latest_image`.

Tools: ``buildah`` and ``mmdebstrap`` (and ``runc``, ``containerd`` for the image's tests) from
the Debian packages listed in ``localcluster/apt/image.txt``, installed by ``make image-deps``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "APT_PACKAGES_FILE",
    "BASE_RECIPE",
    "BaseRecipe",
    "BuiltImage",
    "ImageError",
    "base_archive",
    "base_key",
    "build_image",
    "buildah",
    "cache_dir",
    "copy_sources",
    "image_key",
    "import_image",
    "import_into_cluster",
    "latest_image",
    "main",
    "missing_tools",
    "version",
]

REPO = Path(__file__).resolve().parent.parent
APT_PACKAGES_FILE = REPO / "localcluster" / "apt" / "image.txt"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NAME = "dsguard"


@dataclass(frozen=True)
class BaseRecipe:
    """How the base image is made: `mmdebstrap` of `packages`, then `env` and `cmd` set as its config."""

    suite: str
    variant: str
    packages: tuple[str, ...]
    mirrors: tuple[str, ...]
    hook_dirs: tuple[str, ...]
    dpkgopts: tuple[str, ...]
    skip: tuple[str, ...]
    env: tuple[str, ...]
    cmd: str


#: Any change here changes both cache keys. ca-certificates: the guard's alerts reach Slack and
#: webhooks over HTTPS with the system trust store (the official python image has it too).
BASE_RECIPE = BaseRecipe(
    suite="bookworm",
    variant="minbase",
    packages=("python3", "python3-venv", "ca-certificates"),
    mirrors=(
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ),
    # /usr merged by mmdebstrap's hook: else init-system-helpers pulls in usrmerge, and with it
    # perl (49 MB of the 179 MB).
    hook_dirs=("/usr/share/mmdebstrap/hooks/merged-usr",),
    # Nothing in the image reads man pages, docs or translations; licences stay.
    dpkgopts=(
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*",
    ),
    skip=("output/dev",),  # device nodes come from the runtime, as in any image
    env=("LANG=C.UTF-8",),  # as the official python image
    cmd="python3",
)


class ImageError(RuntimeError):
    """The image could not be built or imported; the message names the step and the fix."""


@dataclass(frozen=True)
class BuiltImage:
    ref: str  # "dsguard:0.1.0"
    cri_ref: str  # "docker.io/library/dsguard:0.1.0"
    archive: Path  # docker-archive tar tagged cri_ref
    key: str  # content key (hex; its first 12 digits for latest_image())
    cached: bool  # True when the archive was already there


def cache_dir() -> Path:
    # The same directory as localcluster/gobuild/build.sh's.
    if os.environ.get("DSGUARD_CACHE"):
        return Path(os.environ["DSGUARD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / NAME


def _images_dir() -> Path:
    d = cache_dir() / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def version(repo: Path = REPO) -> str:
    """The project's version, from pyproject.toml (the image's tag)."""
    with (repo / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths the Dockerfile's COPY steps take (not COPY --from another stage)."""
    out: list[str] = []
    for line in dockerfile.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        out += [w for w in words[1:-1] if not w.startswith("--")]
    return out


def _ignored(path: Path) -> bool:
    # What .dockerignore keeps out of the copied directories.
    return "__pycache__" in path.parts or path.suffix == ".pyc"


def _context_files(repo: Path, sources: Sequence[str]) -> Iterator[Path]:
    for source in sources:
        top = repo / source
        if top.is_file():
            yield top
        elif top.is_dir():
            yield from sorted(p for p in top.rglob("*") if p.is_file() and not _ignored(p.relative_to(repo)))
        else:
            raise ImageError(f"Dockerfile: COPY {source}: no such file or directory in {repo}")


def base_key() -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(BASE_RECIPE), sort_keys=True).encode()).hexdigest()


def image_key(repo: Path = REPO) -> str:
    """The content key of the image: the base recipe, the Dockerfile, .dockerignore, pyproject.toml
    and every file the Dockerfile copies (name, executable bit and bytes)."""
    h = hashlib.sha256()
    h.update(base_key().encode())
    dockerfile = (repo / "Dockerfile").read_text()
    paths = [repo / "Dockerfile", repo / ".dockerignore", repo / "pyproject.toml"]
    paths += _context_files(repo, copy_sources(dockerfile))
    for path in sorted(set(paths)):
        rel = path.relative_to(repo).as_posix()
        executable = os.access(path, os.X_OK)
        h.update(f"{rel}\0{int(executable)}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def missing_tools() -> list[str]:
    return [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]


def _apt_packages() -> str:
    words = (ln.split("#", 1)[0].strip() for ln in APT_PACKAGES_FILE.read_text().splitlines())
    return " ".join(w for w in words if w)


def _storage_args() -> list[str]:
    root = cache_dir() / "buildah"
    return ["--root", str(root / "root"), "--runroot", str(root / "runroot"), "--storage-driver", "vfs"]


def buildah(*args: str, log: Path | None = None, timeout: float = 1800.0) -> str:
    """Run buildah on dsguard's own storage; its stdout. Output goes to `log` too when given;
    a failure raises ImageError with the end of what it printed."""
    cmd = ["buildah", *_storage_args(), *args]
    return _run(cmd, log=log, timeout=timeout)


def _run(cmd: Sequence[str], *, log: Path | None = None, timeout: float = 1800.0) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"{cmd[0]} {_subcommand(cmd)}: {exc}") from exc
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        where = f" (full log: {log})" if log else ""
        raise ImageError(f"{cmd[0]} {_subcommand(cmd)} failed (exit {proc.returncode}){where}:\n{tail}")
    return proc.stdout


def _subcommand(cmd: Sequence[str]) -> str:
    # The first word after the storage options: "build", "push", ...
    it = iter(cmd[1:])
    for word in it:
        if word in ("--root", "--runroot", "--storage-driver"):
            next(it, None)
            continue
        return word
    return ""


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    # One build at a time per cache (make image and a test may start together).
    with (_images_dir() / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _has_image(name: str) -> bool:
    try:
        buildah("inspect", "--type", "image", name, timeout=60)
    except ImageError:
        return False
    return True


def _base_name() -> str:
    return f"localhost/{NAME}-base:{base_key()[:12]}"


def _make_base(archive: Path, log: Path, say: Callable[[str], None]) -> None:
    """mmdebstrap the base's root filesystem and pack it as an OCI archive."""
    recipe = BASE_RECIPE
    with tempfile.TemporaryDirectory(dir=_images_dir(), prefix="base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        cmd = ["mmdebstrap", f"--variant={recipe.variant}", "--include=" + ",".join(recipe.packages)]
        cmd += [f"--hook-dir={d}" for d in recipe.hook_dirs]
        cmd += [f"--dpkgopt={o}" for o in recipe.dpkgopts]
        cmd += [f"--skip={s}" for s in recipe.skip]
        cmd += [recipe.suite, str(rootfs), *recipe.mirrors]
        packages = ",".join(recipe.packages)
        say(f"making the base image: mmdebstrap {recipe.suite} {recipe.variant} + {packages}")
        _run(cmd, log=log)
        container = buildah("from", "scratch", log=log).strip()
        try:
            buildah("add", container, str(rootfs), "/", log=log)
            env_args = [a for e in recipe.env for a in ("--env", e)]
            buildah("config", *env_args, "--cmd", recipe.cmd, container, log=log)
            buildah("commit", "--quiet", container, _base_name(), log=log)
        finally:
            with contextlib.suppress(ImageError):
                buildah("rm", container)
        partial = archive.with_suffix(".partial")
        buildah("push", "--quiet", _base_name(), f"oci-archive:{partial}:{_base_name()}", log=log)
        partial.rename(archive)


def base_archive() -> Path:
    """Where the base image's OCI archive is cached (made by the first build_image)."""
    return _images_dir() / f"{NAME}-base-{base_key()[:12]}.oci.tar"


def _drop_other_bases(keep: Path) -> None:
    # A changed recipe leaves the previous base behind: its archive and its tag in the storage.
    for path in _images_dir().glob(f"{NAME}-base-*.oci.tar"):
        if path != keep:
            path.unlink(missing_ok=True)
    names = buildah("images", "--format", "{{.Name}}:{{.Tag}}", timeout=60).split()
    for name in names:
        if name.startswith(f"localhost/{NAME}-base:") and name != _base_name():
            with contextlib.suppress(ImageError):
                buildah("rmi", name, timeout=120)


def _ensure_base(log: Path, say: Callable[[str], None]) -> str:
    archive = base_archive()
    if not archive.exists():
        t0 = time.monotonic()
        _make_base(archive, log, say)
        size = archive.stat().st_size / 2**20
        say(f"base image made in {time.monotonic() - t0:.0f}s: {archive} ({size:.0f} MiB)")
        _drop_other_bases(archive)
    if not _has_image(_base_name()):
        # The storage was wiped but the archive is cached: load it back.
        image_id = buildah("pull", "--quiet", f"oci-archive:{archive}", log=log).strip().splitlines()[-1]
        buildah("tag", image_id, _base_name(), log=log)
    return _base_name()


def _archives() -> list[Path]:
    """The image archives in the cache, newest first."""
    return sorted(_images_dir().glob(f"{NAME}-[0-9]*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)


def _prune_archives(keep: Path) -> None:
    # Each archive is ~280 MB: keep the newest two, and the build logs of those.
    for path in [p for p in _archives() if p != keep][1:]:
        path.unlink(missing_ok=True)
    kept = {p.stem.rsplit("-", 1)[-1] for p in _archives()}
    for log in _images_dir().glob("build-*.log"):
        if log.stem.removeprefix("build-") not in kept:
            log.unlink(missing_ok=True)


def latest_image() -> BuiltImage | None:
    """The newest image archive built for this version (whatever its sources), without building:
    for a real node that starts after `make image`; None when none was built yet."""
    ver = version()
    for path in _archives():
        _, _, rest = path.stem.partition(f"{NAME}-{ver}-")
        if rest:
            ref = f"{NAME}:{ver}"
            return BuiltImage(
                ref=ref, cri_ref=f"docker.io/library/{ref}", archive=path, key=rest, cached=True
            )
    return None


def _say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def build_image(*, rebuild: bool = False, say: Callable[[str], None] = _say) -> BuiltImage:
    """dsguard's image from the Dockerfile, built with buildah on a locally made Debian base,
    as a docker-archive tar tagged docker.io/library/dsguard:<version>. Cached by content key
    (see the module docstring): a hit costs a hash of the sources. ImageError on failure."""
    ver = version()
    ref = f"{NAME}:{ver}"
    cri_ref = f"docker.io/library/{ref}"
    key = image_key()
    archive = _images_dir() / f"{NAME}-{ver}-{key[:12]}.tar"
    if archive.exists() and not rebuild:
        os.utime(archive)  # the most recently used is latest_image(), and pruned last
        return BuiltImage(ref=ref, cri_ref=cri_ref, archive=archive, key=key, cached=True)
    if os.geteuid() != 0:
        raise ImageError(
            "building the image needs root (buildah's chroot isolation and mmdebstrap run as root "
            "here); run `make image` as root, or where Docker runs: docker build -t " + ref + " ."
        )
    missing = missing_tools()
    if missing:
        raise ImageError(
            f"{', '.join(missing)} not installed: run `make image-deps` "
            f"(as root: apt-get install {_apt_packages()})"
        )
    with _lock():
        if archive.exists() and not rebuild:  # built by another process while we waited
            return BuiltImage(ref=ref, cri_ref=cri_ref, archive=archive, key=key, cached=True)
        log = _images_dir() / f"build-{key[:12]}.log"
        log.write_text("")
        t0 = time.monotonic()
        base = _ensure_base(log, say)
        t1 = time.monotonic()
        say(f"building {cri_ref} from Dockerfile on {base} (log: {log})")
        cmd = ["build", "--isolation", "chroot", "--pull-never", "--layers=false", "--quiet"]
        cmd += ["--build-arg", f"PYTHON_IMAGE={base}", "--file", str(REPO / "Dockerfile"), "--tag", cri_ref]
        if HOST_CA_BUNDLE.is_file():
            # For the RUN steps' TLS only: a bind mount never lands in a layer.
            cmd += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        buildah(*cmd, str(REPO), log=log)
        partial = archive.with_suffix(".partial")
        buildah("push", "--quiet", cri_ref, f"docker-archive:{partial}:{cri_ref}", log=log)
        partial.rename(archive)
        # Earlier builds lost their tag to this one: drop them from the storage.
        with contextlib.suppress(ImageError):
            buildah("rmi", "--prune", log=log)
        _prune_archives(archive)
        done = time.monotonic()
        size = archive.stat().st_size / 2**20
        say(f"built in {done - t0:.0f}s (the Dockerfile's {done - t1:.0f}s): {archive} ({size:.0f} MiB)")
    return BuiltImage(ref=ref, cri_ref=cri_ref, archive=archive, key=key, cached=False)


def import_image(image: BuiltImage, address: str | Path, *, timeout: float = 300.0) -> None:
    """Import the archive into the containerd at `address` (its socket), in CRI's namespace."""
    if shutil.which("ctr") is None:
        raise ImageError("ctr not found: it comes with Debian's containerd package")
    cmd = ["ctr", "--address", str(address), "-n", "k8s.io", "images", "import", str(image.archive)]
    _run(cmd, timeout=timeout)


def import_into_cluster(image: BuiltImage, workdir: Path) -> str | None:
    """When the local cluster in `workdir` runs a real node (its state.json has
    "containerd_address"), import the image into that containerd; the address, or None when
    there is no such cluster."""
    try:
        state = json.loads((workdir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    address = state.get("containerd_address") if isinstance(state, dict) else None
    if not address:
        return None
    import_image(image, str(address))
    return str(address)


def main(argv: list[str] | None = None) -> int:
    """python -m localcluster image: build (cached), import into the local cluster's real node
    when one runs, and print the image reference on the last line."""
    from localcluster.cluster import default_workdir

    parser = argparse.ArgumentParser(prog="python -m localcluster image", description=main.__doc__)
    parser.add_argument("--rebuild", action="store_true", help="build even when the cached archive matches")
    parser.add_argument("--workdir", type=Path, default=default_workdir(), help="the local cluster's dir")
    parser.add_argument("--no-import", action="store_true", help="don't import into the local cluster")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        image = build_image(rebuild=args.rebuild)
        if image.cached:
            _say(f"cached ({time.monotonic() - t0:.1f}s): {image.archive}")
        address = None if args.no_import else import_into_cluster(image, args.workdir.resolve())
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    if address:
        _say(f"imported {image.cri_ref} into the real node's containerd ({address})")
    print(f"archive: {image.archive}")
    print(image.ref)
    return 0
