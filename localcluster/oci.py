"""A one-layer OCI image archive from a few files, without any registry or container engine.

What the real node imports into containerd (``ctr images import``): the pause image (the static
``pause`` binary built by gobuild/build_node.sh) and small test images made of static binaries.
The archive is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) in a
tar; the index names the image (``io.containerd.image.name``), which ctr uses as its reference.
Layers are plain (uncompressed) tars with fixed owners and times, so the same inputs give the
same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ImageFile", "write_oci_archive"]

_LAYER = "application/vnd.oci.image.layer.v1.tar"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageFile:
    """One file of the image: its path inside the image and its content (from src)."""

    path: str
    src: Path
    mode: int = 0o755


def _tar_bytes(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.uid = info.gid = 0
    info.mtime = 0
    return info


def _layer(files: Sequence[ImageFile]) -> bytes:
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs: set[str] = set()
    for f in sorted(files, key=lambda f: f.path):
        rel = f.path.lstrip("/")
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((_info(d, mode=0o755, kind=tarfile.DIRTYPE), None))
        data = f.src.read_bytes()
        entries.append((_info(rel, size=len(data), mode=f.mode), data))
    return _tar_bytes(entries)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_archive(
    out: Path,
    ref: str,
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str],
    env: Mapping[str, str] | None = None,
    user: str = "",
) -> str:
    """Write an OCI archive of a one-layer linux/amd64 image named ref; returns the manifest digest."""
    layer = _layer(files)
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(entrypoint),
            "Env": [f"{k}={v}" for k, v in (env or {"PATH": "/"}).items()],
            "User": user,
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }
    config_blob = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": _MANIFEST,
        "config": {"mediaType": _CONFIG, "digest": _digest(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": _LAYER, "digest": _digest(layer), "size": len(layer)}],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _MANIFEST,
                "digest": _digest(manifest_blob),
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("oci-layout", size=len(layout)), layout),
        (_info("blobs", mode=0o755, kind=tarfile.DIRTYPE), None),
        (_info("blobs/sha256", mode=0o755, kind=tarfile.DIRTYPE), None),
    ]
    for blob in (layer, config_blob, manifest_blob):
        name = "blobs/sha256/" + hashlib.sha256(blob).hexdigest()
        entries.append((_info(name, size=len(blob)), blob))
    index_blob = json.dumps(index, sort_keys=True).encode()
    entries.append((_info("index.json", size=len(index_blob)), index_blob))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(_tar_bytes(entries))
    tmp.replace(out)
    return _digest(manifest_blob)
