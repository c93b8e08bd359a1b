"""Classification first: an adaptation step pauses between layers while a frame is classified.

In one process the inference thread and a background adaptation thread share the CPUs, and in
Python also the GIL; an adaptation step (forward passes over a whole batch) that runs on while a
frame is being classified makes that frame late, which is what shows up in the p99 latency.
Priorities of OS threads do not help with the GIL, so the step yields itself: a forward pre-hook
on every leaf module lets the adapting thread wait, before each layer, until no prediction is in
flight, at most ``max_pause_s`` per layer so that a camera that keeps the model busy all the time
slows adaptation down instead of stopping it. Predictions never wait for adaptation.

Only for methods whose ``predict`` never waits for their ``adapt`` (a method that holds a lock
across its adaptation forward passes, which its ``predict`` also takes, would deadlock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class PredictionFirst:
    """Hooks on ``model``'s leaf modules; :meth:`predicting` marks a classification in flight,
    :meth:`adapting` marks the calling thread as the one that yields."""

    def __init__(self, model: nn.Module, max_pause_s: float) -> None:
        if max_pause_s <= 0:
            raise ValueError(f"max_pause_s must be > 0, got {max_pause_s}")
        self.max_pause_s = float(max_pause_s)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._adapter: int | None = None
        self.paused_s = 0.0        # total time adaptation waited for predictions
        self.pauses = 0
        self._hooks = [m.register_forward_pre_hook(self._before_layer)
                       for m in model.modules() if next(m.children(), None) is None]

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

    @contextmanager
    def adapting(self) -> Iterator[None]:
        self._adapter = threading.get_ident()
        try:
            yield
        finally:
            self._adapter = None

    def _before_layer(self, module: nn.Module, args: object) -> None:
        if not self._in_flight or threading.get_ident() != self._adapter:
            return
        start = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight, self.max_pause_s)
        self.paused_s += time.perf_counter() - start
        self.pauses += 1

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
