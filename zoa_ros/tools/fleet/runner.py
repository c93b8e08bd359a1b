"""Driving one phase of a fleet run: hand the schedule's ready tasks to an executor, take the
results as they finish, store each at once, retry a failed replay once, and count bags and frames
on a progress bar.

A replay whose key is already stored is not run again (status ``cached``). A replay that fails
twice (a corrupt file, a wrong topic, a worker that died) is recorded with both reasons (status
``failed``); nothing of it is stored, so a rerun tries it again, and no other replay waits for
it except the next mission of its robot, which goes on from the robot's last bank
(:class:`~zoa_ros.core.eval.fleet.plan.ChainSchedule`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from zoa_ros.core.eval.fleet.aggregate import method_tallies
from zoa_ros.core.eval.fleet.plan import ChainSchedule, Ready
from zoa_ros.tools.fleet.store import ResultStore
from zoa_ros.tools.fleet.worker import BagFailed, BagJob

ATTEMPTS = 2   # a failed replay is retried once
STORED = ("bank_out", "seconds", "host", "pid", "node")   # taken from a stored task record

Prepare = Callable[[Ready], tuple[dict, BagJob]]


class Progress:
    """Two bars, bags and frames (a terminal, or ``ZOA_PROGRESS`` set); otherwise one stderr
    line per finished bag."""

    def __init__(self, title: str, bags: int, frames: int, bars: bool) -> None:
        self.title, self.bars, self.start = title, bars, time.monotonic()
        self.count, self.total = 0, bags
        self._bags = tqdm(total=bags, desc=f"{title}: bags", unit="bag", file=sys.stderr,
                          disable=not bars, dynamic_ncols=True, position=0)
        self._frames = tqdm(total=frames or None, desc=f"{title}: frames", unit="frame",
                            file=sys.stderr, disable=not bars, dynamic_ncols=True, position=1)

    def finished(self, record: dict, result: dict | None) -> None:
        self.count += 1
        frames = int(result["run"]["frames"]) if result else 0
        if self.bars:
            self._bags.update(1)
            self._frames.update(frames)
            if record["status"] == "failed":
                self._bags.write(f"failed: {record['name']}: {record['errors'][-1]}",
                                 file=sys.stderr)
            return
        print(f"[{time.monotonic() - self.start:7.1f} s] {self.title} {self.count}/{self.total} "
              f"{record['name']} {record['status']}: {describe(record, result)}",
              file=sys.stderr, flush=True)

    def retrying(self, record: dict) -> None:
        message = f"retrying {record['name']}: {record['errors'][-1]}"
        if self.bars:
            self._bags.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        self._frames.close()
        self._bags.close()


def describe(record: dict, result: dict | None) -> str:
    """What a finished bag scored, in one line."""
    if result is None:
        return "; ".join(dict.fromkeys(record["errors"]))
    parts = []
    for name, tally in method_tallies(result).items():
        value = tally.acc if tally.labelled else tally.agreement
        unit = "%" if tally.labelled else "% agree"
        parts.append(f"{name} {'-' if value is None else f'{value:.1f}'}{unit}")
    return f"{result['run']['frames']} frames, " + ", ".join(parts)


def run_phase(schedule: ChainSchedule, executor: object, store: ResultStore, prepare: Prepare,
              progress: Progress) -> list[dict]:
    """Run every task of ``schedule``; the task records in the order they finished.
    ``prepare(ready)`` gives a task's record (its ``key`` included) and job."""
    records: list[dict] = []
    pending: dict[Future, tuple[Ready, dict, BagJob]] = {}

    def finish(ready: Ready, record: dict, result: dict | None) -> None:
        records.append(record)
        bank = record.get("bank_out") if record["status"] != "failed" else None
        schedule.finished(ready.task, bank)
        progress.finished(record, result)

    def start_ready() -> None:
        while batch := schedule.ready():
            for ready in batch:
                record, job = prepare(ready)
                stored = store.lookup(job.key, job.bank_method is not None)
                if stored is not None:
                    record.update({k: stored.get(k) for k in STORED}, status="cached")
                    finish(ready, record, store.result(job.key))
                else:
                    pending[executor.submit(job)] = (ready, record, job)

    try:
        start_ready()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                ready, record, job = pending.pop(future)
                record["attempts"] += 1
                try:
                    outcome = future.result()
                except Exception as e:   # the replay failed, or its worker died
                    record["errors"].append(failure_reason(e, executor, future))
                    if record["attempts"] < ATTEMPTS:
                        progress.retrying(record)
                        pending[executor.submit(job)] = (ready, record, job)
                        continue
                    record["status"] = "failed"
                    finish(ready, record, None)
                    continue
                record.update(store.save(outcome, record), status="ok")
                finish(ready, record, outcome.result)
            start_ready()
    except BaseException:
        executor.close(cancel=True)
        raise
    finally:
        progress.close()
    return records


def failure_reason(error: BaseException, executor: object, future: Future) -> str:
    """One line saying why a job failed (a dead local worker also restarts the pool)."""
    if isinstance(error, BrokenProcessPool):
        executor.restart(future)
        return "its worker process died (killed, or out of memory?)"
    cause = getattr(error, "cause", None) or error   # Ray wraps the task's exception
    if isinstance(cause, BagFailed):
        return cause.reason
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")
