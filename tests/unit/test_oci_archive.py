"""localcluster/oci.py: the one-layer OCI archives the real node imports (pause, test images).
Checked as containerd reads them: an OCI layout whose index names the image, blobs addressed by
their sha256, the config's diff_id the digest of the (uncompressed) layer, and the layer holding
the files with their modes. ctr's import of such an archive is tests/cluster/test_real_node.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from localcluster.oci import ImageFile, write_oci_archive


def _read(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    algo, hexd = digest.split(":")
    assert algo == "sha256"
    data = files[f"blobs/sha256/{hexd}"]
    assert hashlib.sha256(data).hexdigest() == hexd, "a blob's name is its sha256"
    return data


CASES: list[tuple[str, list[tuple[str, bytes, int]], list[str]]] = [
    ("dsguard.local/pause:3.10.2", [("/pause", b"\x7fELF pause", 0o755)], ["/pause"]),
    (
        "dsguard.local/http-echo:1",
        [("/bin/echo", b"echo", 0o755), ("/etc/motd", b"hi\n", 0o644)],
        ["/bin/echo", "8080"],
    ),
]


@pytest.mark.parametrize(("ref", "files", "entrypoint"), CASES, ids=[c[0] for c in CASES])
def test_archive_is_an_oci_layout_naming_the_image(
    tmp_path: Path, ref: str, files: list[tuple[str, bytes, int]], entrypoint: list[str]
) -> None:
    sources = []
    for i, (path, data, mode) in enumerate(files):
        src = tmp_path / f"src{i}"
        src.write_bytes(data)
        sources.append(ImageFile(path, src, mode))
    out = tmp_path / "image.tar"
    digest = write_oci_archive(out, ref, sources, entrypoint=entrypoint)

    content = _read(out)
    assert json.loads(content["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index: dict[str, Any] = json.loads(content["index.json"])
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == ref  # what ctr names the image
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(_blob(content, digest))
    config = json.loads(_blob(content, manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == entrypoint
    (layer_desc,) = manifest["layers"]
    layer = _blob(content, layer_desc["digest"])
    assert layer_desc["size"] == len(layer)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed: diff_id == digest
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for path, data, mode in files:
            m = members[path.lstrip("/")]
            assert (m.mode, m.uid, m.gid) == (mode, 0, 0)
            assert tar.extractfile(m).read() == data  # type: ignore[union-attr]
        for m in members.values():
            if m.name.count("/"):
                assert m.name.rsplit("/", 1)[0] in members, f"{m.name}: parent directory in the layer"


def test_same_inputs_same_digest(tmp_path: Path) -> None:
    src = tmp_path / "pause"
    src.write_bytes(b"pause")
    a = write_oci_archive(
        tmp_path / "a.tar", "x.local/p:1", [ImageFile("/pause", src)], entrypoint=["/pause"]
    )
    src.touch()  # a newer mtime changes nothing: layer entries carry fixed times and owners
    b = write_oci_archive(
        tmp_path / "b.tar", "x.local/p:1", [ImageFile("/pause", src)], entrypoint=["/pause"]
    )
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
