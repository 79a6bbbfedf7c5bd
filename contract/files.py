"""Secrets created once, safely when several processes start at the same moment: the node's
secret and keys and the workspace's signing key (both sides use it, so it lives in ``contract``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def create_once(path: Path, make: bytes) -> bytes:
    """The content of ``path``, a file readable by this user only: ``make`` if this call created
    it, else what another process put there first.

    The file appears whole or not at all (written beside it, then hard-linked into place, which
    fails if the name exists): a process starting at the same moment never reads a half-written
    secret, and never replaces one another process already uses.
    """
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(make)
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(staging)
    return path.read_bytes()


def write_whole(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` so that a reader sees the old content or the new, never a part
    (unchanged content is not rewritten)."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return
    descriptor, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(staging, 0o644)  # a public key
    os.replace(staging, path)
