"""``zoa_node``'s adaptation steps, run on the thread that calls :meth:`AdaptationWorker.run`.

``zoa_node``'s ``main()`` gives it the process's main thread. That thread allocates from glibc's
main heap, which holds blocks of any size. Every thread started later gets a heap of its own,
which cannot hold a block above 64 MiB, so glibc maps such blocks anew at every forward pass.
A 32-frame adaptation batch of EfficientNet-Lite0 has several, and an adaptation thread
page-faulted them in at every pass: 1.8-4.5 million faults in each minute it adapted
(:mod:`zoa_ros.core.runtime.allocator`, docs/lab/robustness.md §9.4).

While the node streams, the worker's thread runs at idle priority (``adaptation.idle_priority``:
SCHED_IDLE, else nice + ``adaptation.thread_nice``), so a step takes a CPU only when
classification does not need it. :meth:`stop` (deactivate, shutdown) aborts a running step at
its next layer, gives the thread its normal priority back where that is permitted, and waits
for the step to end. Linux lets only a privileged process leave SCHED_IDLE or lower a nice
value, so an unprivileged node's main thread stays at idle priority once it has adapted;
``main()`` therefore does everything else (autostart, signals, shutdown, autosave) on a thread
of normal priority.

A reset, bank load or save (:meth:`AdaptationWorker.control`) does not wait for a running step
either: the step is abandoned at its next layer. On CPUs saturated by other work an
idle-priority step may not reach that layer for minutes; the control then gives up after its
timeout with :class:`ControlBusy`, and the caller says so instead of hanging.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

GRACE_S = 0.5   # how long a control waits for a step to abort before raising its priority


class ControlBusy(TimeoutError):
    """A running adaptation step did not let go of the model in time (:meth:`control`)."""


def lower_priority(idle: bool, increment: int, log: Any) -> None:
    """Lower the calling thread's CPU priority (Linux: per thread, and the OpenMP threads torch
    starts for it inherit it), so a background adaptation step takes a CPU only when
    classification does not need it: ``idle`` = the SCHED_IDLE policy (runs only on an otherwise
    idle CPU and yields it at once), else nice + ``increment``. A nice thread still takes its
    share of a busy CPU, and every slice it takes stalls one of the inference thread's OpenMP
    threads while the others wait for it at the end of a kernel."""
    tid = threading.get_native_id()
    try:
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        elif increment > 0:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except (AttributeError, OSError) as e:   # not Linux, or not permitted
        log.warning(f"cannot lower the adaptation thread's priority: {e}")


def normal_priority(tid: int | None) -> None:
    """Thread ``tid`` back to the normal policy (SCHED_OTHER), where permitted (root, or an
    RLIMIT_NICE that allows it)."""
    if tid is None:
        return
    try:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):   # gone, not Linux, or not permitted
        pass


class AdaptationWorker:
    """``Engine.maybe_adapt()`` whenever :meth:`wake` is called, between :meth:`start` and
    :meth:`stop`, on the thread inside :meth:`run`. Steps hold ``lock`` (the node's control
    lock: a step, a reset, a bank load or save never overlap)."""

    def __init__(self, lock: threading.Lock, log: Any,
                 settings: Callable[[], tuple[int, bool, int]]) -> None:
        self._lock = lock
        self._log = log
        self._settings = settings   # (compute threads, idle priority, nice increment)
        self._wake = threading.Event()
        self._engine: Any = None    # set between start() and stop()
        self._session = 0           # start()s so far: the thread sets itself up once per session
        self._tid: int | None = None
        self._relower = False       # a control raised the thread's priority: lower it again
        self.running = False        # run() is looping (a thread state in /diagnostics)
        self.errors = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self, engine: Any) -> None:
        """Adapt ``engine`` from now on."""
        engine.abort_adaptation(False)
        with self._lock:
            self._engine = engine
            self._session += 1
        self._wake.set()   # the thread takes this session's settings now, not at the first step

    def stop(self, timeout: float = 60.0) -> bool:
        """No more steps; a running one is abandoned and undone. ``False`` if it had not ended
        after ``timeout`` seconds."""
        engine, self._engine = self._engine, None
        if engine is None:
            return True
        self._abandon(engine)
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True

    def run(self, until: threading.Event) -> None:
        """Step when woken until ``until`` is set (then call :meth:`interrupt` to end a running
        step at once)."""
        self._tid = threading.get_native_id()
        self.running = True
        session = 0
        try:
            while not until.is_set():
                self._wake.wait(0.25)
                self._wake.clear()
                if until.is_set():
                    break
                try:
                    session = self._step(session)
                except Exception as e:
                    self.errors += 1
                    self._log.error(f"adaptation step failed: {e!r}", throttle_duration_sec=5.0)
                    until.wait(1.0)
        finally:
            self.running = False

    @contextmanager
    def control(self, timeout: float) -> Iterator[None]:
        """Hold the control lock (a reset, bank load or save): a running step is abandoned at
        its next layer and undone rather than waited for. If it has not let go after
        :data:`GRACE_S`, its thread gets normal priority where that is permitted (it goes back
        to idle at its next step). :class:`ControlBusy` after ``timeout`` seconds: an
        idle-priority step on CPUs saturated by other work may get no CPU for minutes."""
        engine = self._engine
        if engine is not None:
            engine.abort_adaptation()
        start = time.monotonic()
        try:
            held = self._lock.acquire(timeout=min(timeout, GRACE_S))
            if not held:
                if self._tid is not None:
                    self._relower = True
                    normal_priority(self._tid)
                held = self._lock.acquire(timeout=max(0.0, timeout - (time.monotonic() - start)))
        finally:
            if engine is not None and self._engine is engine:
                engine.abort_adaptation(False)   # later steps run again (stop() keeps it on)
        if not held:
            raise ControlBusy(f"an adaptation step still held the model {timeout:g} s after it "
                              "was asked to stop (most likely: at idle priority it gets no CPU "
                              "while other work saturates the CPUs)")
        try:
            yield
        finally:
            self._lock.release()

    def interrupt(self) -> None:
        """From another thread, once ``until`` is set: end :meth:`run` promptly."""
        self._abandon(self._engine)

    def _abandon(self, engine: Any) -> None:
        """End a running step at its next layer (it is undone) and wake the thread, at normal
        priority where permitted: at idle priority a busy CPU may never run it."""
        if engine is not None:
            engine.abort_adaptation()
        normal_priority(self._tid)
        self._wake.set()

    def _step(self, session: int) -> int:
        with self._lock:
            engine = self._engine
            if engine is None:
                return session
            if session != self._session:   # a new session: this thread's settings for it
                threads, idle, nice = self._settings()
                from zoa_ros.core.runtime.threads import use_compute_threads

                use_compute_threads(threads)
                lower_priority(idle, nice, self._log)
                session, self._relower = self._session, False
            elif self._relower:              # a control took it out of SCHED_IDLE
                self._relower = False
                if self._settings()[1]:
                    lower_priority(True, 0, self._log)
            report = engine.maybe_adapt()
        log = self._log
        if report is not None and report.rolled_back:
            log.warning(f"adaptation step undone: {getattr(report.info, 'reason', '')}",
                        throttle_duration_sec=5.0)
        elif report is not None:
            log.debug(f"adaptation step {report.step}: {report.frames} frames, "
                      f"{report.ms:.0f} ms")
            if report.domain_changed:
                log.info(f"domain change: now domain {report.domain_id}, "
                         f"{report.bank_entries} bank entries")
        return session
