"""The cache directory (converted weights, engine exports, the backend choice), atomic writes into it, and file
digests (which name and check what it holds).

Several replicas may start at once on one cache: every file is written under a name unique to the writing process
and renamed into place, so a reader sees the old file or the whole new one, never half of one. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Where converted weights and exports are kept: ``$DETECTOR_CACHE_DIR``, else ``~/.cache/ssdlite-detector``."""
    if os.environ.get("DETECTOR_CACHE_DIR"):
        return Path(os.environ["DETECTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssdlite-detector"


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` in one rename.

    On an exception the partial file is removed and ``path`` is left as it was. ``mode``: permissions to give the
    file before it appears (e.g. 0o644 for weights shared with a service's user).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield staged
        if mode is not None:
            os.chmod(staged, mode)
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path, mode) as staged:
        if isinstance(data, str):
            staged.write_text(data)
        else:
            staged.write_bytes(data)
    return Path(path)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, hex, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
