"""How a finished replay is recognised again: content hashes.

A task's key (:func:`task_key`) is the sha256 over the recording's content (every file of the
bag, by relative name and bytes), the model pack's fingerprint (its own content hash), the
replay configuration (canonical JSON of every option that changes the numbers), the bytes of
the bank it loads (or none), the zoa_ros version and :data:`RESULT_VERSION`. A rerun that finds
a stored result under the same key skips that replay; a changed bag, pack, option or input bank
gives another key, and the replay runs again.

Hashing a file reads it once. :class:`DigestCache` keeps each file's digest with its size and
modification time (in a JSON file beside the results), so a rerun reads only files that changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import zoa_ros
from zoa_ros.core.files.atomic import atomic_write_bytes

RESULT_VERSION = 1
_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical(value: object) -> str:
    """Canonical JSON (sorted keys, no spaces) of a configuration."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def task_key(bag: str, pack: str, config: Mapping, bank: str | None) -> str:
    """The key of one replay: digests of its bag, pack and input bank (``None``: empty) and
    its configuration."""
    doc = {"bag": bag, "pack": pack, "config": config, "bank": bank,
           "zoa_ros": zoa_ros.__version__, "result_version": RESULT_VERSION}
    return hashlib.sha256(canonical(doc).encode()).hexdigest()


class DigestCache:
    """File digests remembered by path, size and modification time; ``path``: the JSON file
    that keeps them between runs (``None``: this run only)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._known: dict[str, dict] = {}
        self.read_bytes = 0   # bytes hashed by this instance (the rest came from the cache)
        if self.path is not None and self.path.is_file():
            try:
                known = json.loads(self.path.read_text())
            except (OSError, ValueError):
                known = {}   # a damaged cache only costs a re-read
            self._known = known if isinstance(known, dict) else {}

    def file(self, path: str | Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        seen = self._known.get(str(path))
        if seen and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
            return str(seen["sha256"])
        digest = file_digest(path)
        self.read_bytes += stat.st_size
        self._known[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                  "sha256": digest}
        return digest

    def bag(self, path: str | Path) -> str:
        """Digest of a recording: a single file's, or over a bag folder's files (relative name
        and digest, sorted by name)."""
        path = Path(path)
        if not path.is_dir():
            return self.file(path)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.relative_to(path).as_posix()}\0{self.file(f)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        if self.path is not None:
            atomic_write_bytes(self.path, json.dumps(self._known, indent=0).encode())
