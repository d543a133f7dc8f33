"""Content hashing, cache keys and atomic writes.

Every artifact sideband writes goes through :func:`atomic_path`: the data are written to
a temporary file in the destination directory and renamed over the destination only
once complete, so an interrupted run never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["file_hash", "cache_key", "atomic_path", "write_json", "write_text"]


def file_hash(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """BLAKE2b hash (hex, 32 chars) of a file's bytes, read in blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def cache_key(*parts: Any) -> str:
    """A short stable key from JSON-serialisable parts (dicts are key-sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; finished files get the usual mode
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(dest: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(dest, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return Path(dest)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write text, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)
