"""Files replaced atomically, with their mode set from the start: certificates and keys written
by `dsguard certs`, and the webhook's scratch copy of a key pair being checked."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write to a new file next to `path` with `mode` from the start, then rename it over `path`.

    A reader sees the old or the new content, never a torn one; a symlink at `path` is replaced,
    not followed; the bytes never sit in a file with a wider mode.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never wider than asked
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write key material readable by the owner only (0600), never world-readable even for an instant."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate (0644), atomically."""
    _write_atomic(path, data, 0o644)
