"""The fleet run's results folder, ``OUT/results/``, one set of files per replay key
(:func:`~zoa_ros.core.eval.fleet.keys.task_key`):

* ``KEY.json``: the replay result, exactly what ``zoa-ros replay --json`` writes (``zoa-ros
  report KEY.json --out DIR`` renders its single-bag report);
* ``KEY.zoabank``: the knowledge bank the replay ended with (methods with a bank);
* ``KEY.log``: everything the replay printed;
* ``KEY.task.json``: the task (bag, robot, mission, phase, the bank it loaded), where and how
  long it ran, and the ``zoa-ros replay`` command that reproduces the result. Written last, so
  a replay counts as done only once all its files are complete; every file is written
  atomically, so an interrupted run leaves either a complete result or none.

A rerun finds a done key and skips that replay (:meth:`ResultStore.lookup`).
"""

from __future__ import annotations

import json
from pathlib import Path

from zoa_ros.core.eval.fleet.keys import DigestCache
from zoa_ros.core.files.atomic import atomic_write_bytes
from zoa_ros.tools.fleet.worker import BagOutcome


class ResultStore:
    """``OUT/results`` (see the module docstring) and the digest cache beside it; ``reuse``
    off: :meth:`lookup` finds nothing, every replay runs again."""

    def __init__(self, out: str | Path, reuse: bool = True) -> None:
        self.out, self.reuse = Path(out), reuse
        self.folder = self.out / "results"
        self.digests = DigestCache(self.out / "digests.json")
        self._results: dict[str, dict] = {}

    def json_path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def bank_path(self, key: str) -> Path:
        return self.folder / f"{key}.zoabank"

    def log_path(self, key: str) -> Path:
        return self.folder / f"{key}.log"

    def task_path(self, key: str) -> Path:
        return self.folder / f"{key}.task.json"

    def lookup(self, key: str, needs_bank: bool) -> dict | None:
        """The stored task record of a complete replay under ``key``; ``None`` if there is
        none, it is damaged (the replay then runs again) or ``reuse`` is off."""
        if not self.reuse:
            return None
        try:
            task = json.loads(self.task_path(key).read_text())
            self.result(key)
        except (OSError, ValueError):
            return None
        if needs_bank and task.get("bank_out") and not self.bank_path(key).is_file():
            return None
        return task

    def save(self, outcome: BagOutcome, task: dict) -> dict:
        """Store a finished replay; returns its task record as stored."""
        key = outcome.key
        if outcome.bank is not None:
            atomic_write_bytes(self.bank_path(key), outcome.bank)
        atomic_write_bytes(self.log_path(key), outcome.log.encode())
        atomic_write_bytes(self.json_path(key), json.dumps(outcome.result, indent=1).encode())
        self._results[key] = outcome.result
        task = {**task, "bank_out": str(self.bank_path(key)) if outcome.bank else None,
                "seconds": outcome.seconds, "host": outcome.host, "pid": outcome.pid,
                "node": outcome.node, "zoa_ros": outcome.version}
        atomic_write_bytes(self.task_path(key), json.dumps(task, indent=1).encode())
        return task

    def result(self, key: str) -> dict:
        """The stored replay result of ``key`` (read once)."""
        if key not in self._results:
            result = json.loads(self.json_path(key).read_text())
            if not isinstance(result, dict) or "methods" not in result:
                raise ValueError(f"{self.json_path(key)}: not a replay result")
            self._results[key] = result
        return self._results[key]

    def results(self) -> dict[str, dict]:
        """Every result read or stored so far, by key."""
        return dict(self._results)
