"""Images for the real-node tests, made here without a registry: a static binary in a one-layer
OCI archive (localcluster/oci.py), imported into the node's containerd at start."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.oci import ImageFile, write_oci_archive

__all__ = ["HTTP_ECHO_REF", "NodeImage", "build_http_echo"]

HERE = Path(__file__).resolve().parent
#: A registry domain in the name: CRI would turn a bare name into docker.io/library/NAME.
HTTP_ECHO_REF = "dsguard.local/http-echo:1"


@dataclass(frozen=True)
class NodeImage:
    ref: str
    archive: Path


def build_http_echo(out_dir: Path) -> NodeImage:
    """tests/support/images/http_echo.c, `gcc -static`, as the image HTTP_ECHO_REF: it serves its
    hostname on :8080, and `http_echo probe IP:PORT ...` connects to each address."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "http_echo"
    subprocess.run(
        [
            "gcc",
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            "-o",
            str(binary),
            str(HERE / "images" / "http_echo.c"),
        ],
        check=True,
        capture_output=True,
    )
    archive = out_dir / "http-echo.tar"
    write_oci_archive(archive, HTTP_ECHO_REF, [ImageFile("/http_echo", binary)], entrypoint=["/http_echo"])
    return NodeImage(HTTP_ECHO_REF, archive)
