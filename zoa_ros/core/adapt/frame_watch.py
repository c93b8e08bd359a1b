"""Fast domain-change test on the classified frames themselves (streaming, BatchNorm models).

The batch detector (:mod:`.detector`) tests once per adaptation batch, so in streaming mode a
new domain is classified for a whole batch (64 frames, four seconds at 15 Hz) with the running
statistics of the old one. :class:`FrameWatch` runs the same test - the Jeffreys divergence of
the stem features' per-channel Gaussians - on short windows of frames as they are classified,
from the statistics their prediction forwards already measured (no extra pass):

* frames are pooled into a window of ``window`` frames; a full window is compared with the
  reference, the pool of every window since the last change;
* a divergence above ``threshold`` is a change: the window becomes the new reference and its
  frames' per-layer BatchNorm moments are handed back, so the caller can restart the running
  statistics from them; otherwise the window joins the reference.

A 16-frame window carries less content than a 64-frame batch, so its threshold is higher than
the batch detector's (``frame_watch_t``, docs/RESULTS.md §2.4e measures both distributions).
Windows from several threads are pooled in arrival order under a lock.
"""

from __future__ import annotations

import threading

import torch

from zoa_ros.core.adapt.detector import jeffreys
from zoa_ros.core.adapt.taps import EarlyStats

Sink = dict[int, tuple[torch.Tensor, torch.Tensor]]


class FrameWatch:
    """Windowed change test over classified frames; see the module docstring."""

    def __init__(self, window: int, threshold: float) -> None:
        if window < 2:
            raise ValueError(f"frame_watch_window must be >= 2 (or 0 for off), not {window}")
        self.window = window
        self.threshold = threshold
        self.changes = 0
        self._reference: EarlyStats | None = None
        self._early: EarlyStats | None = None
        self._sinks: list[Sink] = []
        self._frames = 0
        self._lock = threading.Lock()

    def observe(self, early: EarlyStats, sink: Sink, frames: int) -> Sink | None:
        """Add ``frames`` classified frames; the window's per-frame BatchNorm moments (layer →
        ``[window, C]`` means and mean squares) when this completed a window that changed."""
        with self._lock:
            self._early = early if self._early is None else self._early + early
            self._sinks.append(sink)
            self._frames += frames
            if self._frames < self.window:
                return None
            window, sinks = self._early, self._sinks
            self._early, self._sinks, self._frames = None, [], 0
            reference = self._reference
            if reference is not None and jeffreys(reference.mean, reference.var, window.mean,
                                                  window.var) > self.threshold:
                self._reference = window
                self.changes += 1
                return {i: (torch.cat([s[i][0] for s in sinks]),
                            torch.cat([s[i][1] for s in sinks])) for i in sinks[0]}
            self._reference = window if reference is None else reference + window
            return None

    def clear(self) -> None:
        with self._lock:
            self._reference, self._early, self._sinks, self._frames = None, None, [], 0
