"""Classification first: an adaptation step pauses between layers while a frame is classified.

In the node the inference thread and the background adaptation thread run at once, each on a
CPU of its own. Even so, a step running beside a prediction makes it slower: the two share the
memory bandwidth and the caches (docs/lab/node-latency.md §4.5 measures the slowdown). A step
therefore
yields: before each of the model's normalisation layers (our fused layers call
:func:`yield_point`), the adapting thread waits while a prediction is in flight, at most
``max_pause_s`` per layer, so that a camera that keeps the model busy all the time slows
adaptation down instead of stopping it. Predictions
never wait. The check costs a thread that is not adapting one thread-local lookup per layer.

Only for methods whose ``predict`` never waits for their ``adapt`` (a method that holds a lock
across its adaptation forward passes, which its ``predict`` also takes, would stall).

The same points let a step be abandoned (:meth:`PredictionFirst.abort`): the next one raises
:class:`StepAborted` in the adapting thread, and the method undoes what the step had changed.
A node that stops need not wait for a step that a busy CPU (the adaptation thread runs at idle
priority) would otherwise take many seconds to finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


class StepAborted(Exception):
    """Raised at a yield point of an adaptation step after :meth:`PredictionFirst.abort`."""


def yield_point() -> None:
    """Called by a layer before it runs: pauses the calling thread while it adapts inside
    :meth:`PredictionFirst.adapting` and a prediction is in flight."""
    gate = getattr(_local, "gate", None)
    if gate is not None:
        gate.wait()


class PredictionFirst:
    """:meth:`predicting` marks a classification in flight; :meth:`adapting` makes the calling
    thread yield to it at every :func:`yield_point` (``max_pause_s`` 0: it never does)."""

    def __init__(self, max_pause_s: float, abortable: bool = False) -> None:
        if max_pause_s < 0:
            raise ValueError(f"max_pause_s must be >= 0, got {max_pause_s}")
        self.max_pause_s = float(max_pause_s)
        self.abortable = abortable
        self._cond = threading.Condition()
        self._in_flight = 0
        self._aborting = False
        self.paused_s = 0.0        # total time adaptation waited for predictions
        self.pauses = 0

    @contextmanager
    def predicting(self) -> Iterator[None]:
        with self._cond:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                if not self._in_flight:
                    self._cond.notify_all()

    @property
    def enabled(self) -> bool:
        return self.max_pause_s > 0

    @contextmanager
    def adapting(self) -> Iterator[None]:
        previous = getattr(_local, "gate", None)
        _local.gate = self if self.enabled or self.abortable else None
        try:
            yield
        finally:
            _local.gate = previous

    def abort(self, on: bool = True) -> None:
        """From now on (``on``) every yield point of a step raises :class:`StepAborted`, at
        once for one that is waiting; ``on`` False lets steps run again."""
        with self._cond:
            self._aborting = on
            self._cond.notify_all()

    def wait(self) -> None:
        """Wait while a prediction is in flight, at most ``max_pause_s``;
        :class:`StepAborted` after :meth:`abort`."""
        if self._aborting:
            raise StepAborted("adaptation step abandoned")
        if not self._in_flight or not self.enabled:
            return
        start = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight or self._aborting,
                                self.max_pause_s)
        self.paused_s += time.perf_counter() - start
        self.pauses += 1
        if self._aborting:
            raise StepAborted("adaptation step abandoned")
