"""The user's cache: things zoa_ros builds once on first use and reuses (the default model pack).

The root is ``$ZOA_ROS_CACHE``, else ``~/.ros/zoa_ros`` (beside the default knowledge bank).
Each built thing lives in an *entry*: a folder named after a hash of everything that goes into
it, so a changed input gets a new entry instead of a stale one, and artifacts derived from the
same inputs (a model pack, later e.g. its ONNX export) live side by side in it
(:meth:`CacheEntry.path`). Several processes may start at once on a fresh cache: whoever
builds an entry holds its lock (``fcntl.flock`` on ``<entry>/.lock``, released by the kernel if
the builder dies), the others wait for it and then find the result; every file is written
atomically (:func:`~zoa_ros.core.files.atomic.atomic_write_bytes`), so a reader never sees half
of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from zoa_ros.core.files.atomic import atomic_write_bytes

ENV = "ZOA_ROS_CACHE"
DEFAULT_ROOT = "~/.ros/zoa_ros"
MANIFEST = "manifest.json"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$ZOA_ROS_CACHE`` (``~`` and ``$VARS`` expanded), else ``~/.ros/zoa_ros``."""
    env = os.environ if environ is None else environ
    text = (env.get(ENV) or "").strip() or DEFAULT_ROOT
    return Path(os.path.expanduser(os.path.expandvars(text))).absolute()


def inputs_key(inputs: Mapping[str, object]) -> str:
    """sha256 of ``inputs`` as canonical JSON: the identity of what a cache entry is built
    from."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """``<root>/<kind>/<name>-<key[:16]>/``: the artifacts built from inputs with ``key``."""

    root: Path
    kind: str
    name: str
    key: str

    @property
    def folder(self) -> Path:
        return self.root / self.kind / f"{self.name}-{self.key[:16]}"

    def path(self, artifact: str) -> Path:
        """Where artifact ``artifact`` (a file name) of this entry lives."""
        return self.folder / artifact

    @contextlib.contextmanager
    def locked(self, waiting: Callable[[str], None] | None = None) -> Iterator[float]:
        """Hold the entry's build lock (exclusive, between processes); yields the seconds spent
        waiting for another holder. ``waiting`` is told when the lock is busy."""
        self.folder.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(self.folder / ".lock", "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting(f"another process is building {self.folder}; waiting for it")
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield time.monotonic() - start
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def write_manifest(self, inputs: Mapping[str, object], **extra: object) -> None:
        """``manifest.json``: the key, the inputs it hashes and ``extra`` (e.g. build time), so
        a person can tell what an entry holds."""
        document = {"key": self.key, "inputs": dict(inputs), **extra}
        atomic_write_bytes(self.path(MANIFEST),
                           json.dumps(document, indent=2, default=str).encode())
