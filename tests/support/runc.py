"""Run dsguard's built image with runc the way a kubelet runs the manifests' pods, no Kubernetes.

    with unpacked_image(f"docker-archive:{archive}") as image:   # buildah from it, mounted
        spec = pod_container_spec(deployment, "webhook", volumes={"tls": secret_dir}, image=image)
        result = run_once(image, spec, tmp_path, args=["--version"])
        with started(image, spec, tmp_path) as container: ...   # a detached container

The container spec is derived from the Deployment: the pod's and the container's securityContext
(runAsUser/runAsGroup, fsGroup as a supplementary group, readOnlyRootFilesystem,
allowPrivilegeEscalation: false as no_new_privs, capabilities drop ALL as none at all), the
container's args after the image's ENTRYPOINT, its memory limit, and its volumeMounts: an
`emptyDir` becomes a tmpfs of its sizeLimit, any other volume a bind mount of the host directory
the caller gives (laid out like the kubelet's, e.g. with SecretVolume and secret_permissions).
The container shares the host's network (its ports are the host's loopback ports); it gets its
own pid, mount, ipc and uts namespaces and the masked /proc paths of runc's default spec. Not
reproduced: the RuntimeDefault seccomp profile and the CPU limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster.image import buildah

Obj = dict[str, Any]

BASE_MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "base"


def base_deployment(file: str) -> Obj:
    """The one Deployment in manifests/base/<file>: what a pod run as the manifests say reads."""
    docs = [d for d in yaml.safe_load_all((BASE_MANIFESTS / file).read_text()) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert isinstance(dep, dict)
    return dep


# runc spec's defaults: what a container runtime hides from /proc and /sys.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class UnpackedImage:
    rootfs: Path
    config: Obj  # the OCI image config's "config": User, Env, Entrypoint, Cmd, ...

    @property
    def entrypoint(self) -> list[str]:
        return list(self.config.get("Entrypoint") or [])

    @property
    def env(self) -> list[str]:
        return list(self.config.get("Env") or [])


@contextlib.contextmanager
def unpacked_image(source: str) -> Iterator[UnpackedImage]:
    """An image (`docker-archive:FILE`, `oci-archive:FILE`, ...) as a root filesystem: a buildah
    working container on dsguard's image storage, removed after."""
    container = buildah("from", "--pull-never", "--quiet", source, timeout=600).strip()
    container = container.splitlines()[-1]
    try:
        rootfs = Path(buildah("mount", container, timeout=60).strip())
        info = json.loads(buildah("inspect", "--type", "container", container, timeout=60))
        yield UnpackedImage(rootfs=rootfs, config=info["OCIv1"]["config"])
    finally:
        with contextlib.suppress(Exception):
            buildah("umount", container, timeout=60)
        buildah("rm", container, timeout=120)


@dataclass(frozen=True)
class Mount:
    destination: str
    source: Path | None  # None: a tmpfs
    read_only: bool
    size_limit: int | None = None  # bytes, tmpfs only


@dataclass(frozen=True)
class ContainerSpec:
    uid: int
    gid: int
    supplementary_gids: tuple[int, ...]
    read_only_root: bool
    no_new_privileges: bool
    capabilities: tuple[str, ...]  # what stays after the drop/add
    args: tuple[str, ...]  # after the image's entrypoint
    mounts: tuple[Mount, ...] = ()
    memory_limit: int | None = None
    env: tuple[str, ...] = ()  # after the image's


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes memory/storage quantity ("512Mi", "16Mi", "1Gi", "1000") in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G|)", str(value))
    if not m:
        raise ValueError(f"unsupported quantity {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _image_user(image: UnpackedImage) -> tuple[int | None, int | None]:
    user = str(image.config.get("User") or "")
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def pod_container_spec(
    deployment: Mapping[str, Any],
    container_name: str,
    *,
    volumes: Mapping[str, Path],
    image: UnpackedImage,
    fields: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The runc-level spec of one container of `deployment` as a kubelet would run it. `volumes`:
    a host directory for each non-emptyDir volume the container mounts; `fields`: the values of
    the downward API's fieldPaths its env uses (e.g. {"metadata.name": "dsguard-guard-0"})."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == container_name]
    psc: Obj = pod.get("securityContext") or {}
    csc: Obj = container.get("securityContext") or {}
    image_uid, image_gid = _image_user(image)
    uid = csc.get("runAsUser", psc.get("runAsUser", image_uid))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", image_gid if image_gid is not None else 0))
    if uid is None or gid is None:
        raise ValueError(f"{container_name}: no numeric user in the pod spec nor the image")
    if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and uid == 0:
        raise ValueError(f"{container_name}: runAsNonRoot, but the user is root (the kubelet refuses it)")
    groups = [psc["fsGroup"]] if "fsGroup" in psc else []
    groups += psc.get("supplementalGroups") or []
    caps = csc.get("capabilities") or {}
    dropped = set(caps.get("drop") or [])
    if "ALL" not in dropped:
        raise ValueError(f"{container_name}: only containers dropping ALL capabilities are modelled")
    pod_volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        volume = pod_volumes[vm["name"]]
        if "emptyDir" in volume:
            limit = (volume["emptyDir"] or {}).get("sizeLimit")
            mounts.append(
                Mount(
                    vm["mountPath"],
                    None,
                    read_only=False,
                    size_limit=quantity_bytes(limit) if limit else None,
                )
            )
        else:
            mounts.append(Mount(vm["mountPath"], volumes[vm["name"]], read_only=bool(vm.get("readOnly"))))
    env: list[str] = []
    for var in container.get("env") or []:
        if "value" in var:
            env.append(f"{var['name']}={var['value']}")
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            env.append(f"{var['name']}={(fields or {})[path]}")
    memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return ContainerSpec(
        uid=int(uid),
        gid=int(gid),
        supplementary_gids=tuple(int(g) for g in groups),
        read_only_root=bool(csc.get("readOnlyRootFilesystem")),
        # allowPrivilegeEscalation defaults to true in Kubernetes (unless privileged/CAP_SYS_ADMIN)
        no_new_privileges=csc.get("allowPrivilegeEscalation") is False,
        capabilities=tuple(f"CAP_{c}" for c in caps.get("add") or []),
        args=tuple(container.get("args") or ()),
        mounts=tuple(mounts),
        memory_limit=quantity_bytes(memory) if memory else None,
        env=tuple(env),
    )


def secret_permissions(volume_dir: Path, *, mode: int, fs_group: int | None) -> None:
    """What the kubelet does to a Secret volume's files: `defaultMode`, group-owned by fsGroup
    (root-owned otherwise), directories readable by the group."""
    for path in [volume_dir, *volume_dir.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, 0, fs_group if fs_group is not None else 0)
        path.chmod((0o750 if fs_group is not None else 0o755) if path.is_dir() else mode)


def oci_config(image: UnpackedImage, spec: ContainerSpec, *, args: Sequence[str] | None = None) -> Obj:
    """The runtime-spec config.json for `spec` on `image` (args replace the spec's own)."""
    mounts: list[Obj] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ]
    for m in spec.mounts:
        if m.source is None:
            options = ["nosuid", "nodev", "mode=1777"]
            if m.size_limit:
                options.append(f"size={m.size_limit}")
            mounts.append(
                {"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": options}
            )
        else:
            options = ["rbind", "ro" if m.read_only else "rw"]
            mounts.append(
                {"destination": m.destination, "type": "bind", "source": str(m.source), "options": options}
            )
    caps = list(spec.capabilities)
    resources: Obj = {"devices": [{"allow": False, "access": "rwm"}]}
    if spec.memory_limit:
        resources["memory"] = {"limit": spec.memory_limit}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": list(spec.supplementary_gids)},
            "args": [*image.entrypoint, *(spec.args if args is None else args)],
            "env": [*image.env, *spec.env],
            "cwd": str(image.config.get("WorkingDir") or "/"),
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")},
            # No rlimits: the host's (this VM's root can't raise them, like the OOM score).
            "noNewPrivileges": spec.no_new_privileges,
        },
        "root": {"path": str(image.rootfs), "readonly": spec.read_only_root},
        "hostname": "dsguard",
        "mounts": mounts,
        "linux": {
            "resources": resources,
            # No network namespace: the host's (the test talks to the container on loopback).
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _bundle(workdir: Path, config: Obj) -> tuple[Path, Path, str]:
    container_id = f"dsguard-image-{uuid.uuid4().hex[:10]}"
    bundle = workdir / container_id
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    state = workdir / "runc-state"  # runc's --root: our own, apart from containerd's
    state.mkdir(exist_ok=True)
    return bundle, state, container_id


def run_once(
    image: UnpackedImage, spec: ContainerSpec, workdir: Path, *, args: Sequence[str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the container to completion in the foreground; its exit status and output."""
    bundle, state, cid = _bundle(workdir, oci_config(image, spec, args=args))
    try:
        return subprocess.run(
            ["runc", "--root", str(state), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        subprocess.run(
            ["runc", "--root", str(state), "delete", "--force", cid], capture_output=True, check=False
        )


@dataclass
class RunningContainer:
    id: str
    state: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        """Its state and what it printed: for assertion messages."""
        return f"container {self.id} {self.status()}; its output:\n{self.output()}"

    def status(self) -> str:
        proc = subprocess.run(
            ["runc", "--root", str(self.state), "state", self.id], capture_output=True, text=True, check=False
        )
        return str(json.loads(proc.stdout)["status"]) if proc.returncode == 0 else "gone"


@contextlib.contextmanager
def started(
    image: UnpackedImage, spec: ContainerSpec, workdir: Path, *, args: Sequence[str] | None = None
) -> Iterator[RunningContainer]:
    """A detached container (its output in a log file), killed and deleted on exit."""
    bundle, state, cid = _bundle(workdir, oci_config(image, spec, args=args))
    log = bundle / "output.log"
    with log.open("w") as out:
        subprocess.run(
            ["runc", "--root", str(state), "run", "--detach", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=True,
            timeout=120,
        )
    try:
        yield RunningContainer(id=cid, state=state, log=log)
    finally:
        subprocess.run(
            ["runc", "--root", str(state), "kill", cid, str(int(signal.SIGKILL))],
            capture_output=True,
            check=False,
        )
        subprocess.run(
            ["runc", "--root", str(state), "delete", "--force", cid], capture_output=True, check=False
        )
