"""Recall of a domain's BatchNorm test statistics when the stream returns to it.

In streaming mode a BatchNorm model classifies single frames with a running estimate of the
test statistics (:mod:`.bn_stats`). After a domain change that estimate lags: it still holds
the previous domain for about ``1/frame_momentum`` frames, and the first frames of the new
domain are classified with the wrong statistics (docs/lab/streaming-statistics.md §2.4j: the first
64 frames of a
domain score ~10 points below the rest). ZOA's bank keeps what the *affine* parameters learned
per domain; this memory keeps the *statistics*, so a revisited domain is normalised with its
own statistics from its first frames on.

:class:`StatsRecall` watches the stem statistics of the frames being classified - the domain
detector's signal, measured in the prediction's own forward pass, before any BatchNorm runs -
with a :class:`~.detector.DomainDetector` of its own. A call that brings ``window`` frames or
more is tested alone; smaller calls (a robot's single frames) are pooled until ``window``
frames. On a change it

1. remembers the running estimate of the domain that ended, keyed by the watch's estimate of
   that domain's stem statistics (a key within ``threshold`` of a stored one replaces it: one
   entry per domain; the least recently used entry goes when ``capacity`` is exceeded). Both
   are taken as they stood at the start of the window *before* the one that fired: by the time
   a change is detected the new domain's first frames are already folded into the running
   estimate (after ``window`` frames, ~27 % of it at ``frame_momentum`` 0.01) and may have moved
   the watch, and a change that began late in a window fires only in the next one;
2. looks the new frames' stem statistics up among the stored keys: the nearest within
   ``threshold`` gives the statistics to normalise with from now on - already for the frames
   whose forward pass is running (:meth:`observe` runs in the stem's forward hook).

With ZOA's shift gate (:mod:`.shift_gate`) the gate decides when a domain begins and ends, and
the memory has no watch of its own: :meth:`remember` stores a domain that ended, keyed by its
frames' mean and *scene variance* (which a contrast change scales for every scene alike, where
the pooled variance mixes in how much the scenes differ), and :meth:`find` looks a new one up
at the gate's calibrated change threshold.

No entry within the threshold (a domain not seen before): the running estimate is kept and
follows the new domain by the frames rule. The memory costs no forward pass.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import torch

from zoa_ros.core.adapt.detector import DomainDetector, jeffreys
from zoa_ros.core.adapt.params import BnStats
from zoa_ros.core.model.features import EarlyStats
from zoa_ros.core.model.shift_reference import variance_divergence


@dataclass(frozen=True)
class RecallEntry:
    """One remembered domain: its stem-statistics key and its BatchNorm running estimate."""

    key_mean: torch.Tensor
    key_var: torch.Tensor
    stats: BnStats


class StatsRecall:
    """Per-domain memory of BatchNorm test statistics, keyed by stem statistics."""

    def __init__(self, threshold: float, momentum: float, window: int, capacity: int) -> None:
        if window < 2:
            raise ValueError(f"recall_window must be >= 2, not {window}")
        self.threshold = float(threshold)
        self.window = int(window)
        self.capacity = int(capacity)
        self.watch = DomainDetector(threshold, momentum, min_batch=self.window)
        self.entries: list[RecallEntry] = []
        self.recalls = 0
        self._pending: EarlyStats | None = None
        self._pending_frames = 0
        self._starts: deque[RecallEntry] = deque(maxlen=2)   # the last two windows' starts
        self._lock = threading.Lock()

    def observe(self, early: EarlyStats, frames: int, current: BnStats,
                unknown: BnStats | None = None) -> BnStats | None:
        """Fold ``frames`` classified frames' stem statistics into the watch; ``current`` is
        the running estimate they are about to be normalised with. Returns the statistics to
        use instead (a recalled domain, or ``unknown`` on a change to a domain the memory does
        not hold), or ``None`` to keep ``current``."""
        with self._lock:
            if self._pending is None and self.watch.mean is not None:   # a window starts
                self._starts.append(RecallEntry(self.watch.mean, self.watch.var, current))
            if frames < self.window:
                early = early if self._pending is None else self._pending + early
                frames += self._pending_frames
                if frames < self.window:
                    self._pending, self._pending_frames = early, frames
                    return None
            self._pending, self._pending_frames = None, 0
            mean, var = early.mean, early.var
            if not self.watch.observe(mean, var, frames).changed:
                return None
            if self._starts:
                self._remember(self._starts[0])
            self._starts.clear()
            found = self._lookup(mean, var)
            return unknown if found is None else found

    def remember(self, key: tuple[torch.Tensor, torch.Tensor], stats: BnStats,
                 threshold: float) -> BnStats:
        """Store a domain the shift gate saw end (its key: mean of frame means and scene
        variance, :meth:`~.shift_gate.ShiftGate.key`), replacing one it cannot tell apart
        (:meth:`find` at ``threshold``); returns the stored statistics."""
        with self._lock:
            mean, var = (t.float() for t in key)
            same = self._closest(var, threshold)
            if same is not None:
                del self.entries[same]
            entry = RecallEntry(mean, var, tuple(stats))
            self.entries.append(entry)
            if len(self.entries) > self.capacity:
                del self.entries[0]
            return entry.stats

    def find(self, key: tuple[torch.Tensor, torch.Tensor], threshold: float,
             recalled: BnStats | None = None, skip: BnStats | None = None) -> BnStats | None:
        """The statistics of the remembered domain whose scene variance is nearest ``key``'s,
        if within ``threshold`` (:func:`~zoa_ros.core.model.shift_reference.
        variance_divergence`; the shift gate's change threshold: as close as related content
        alone puts two windows of one domain). Finding ``recalled`` (the statistics an earlier
        look-up gave) confirms that recall and is not counted again. The entry holding ``skip``
        is left out (a domain known not to be the one looked up)."""
        with self._lock:
            return self._take(self._closest(key[1].float(), threshold, skip), recalled)

    def _closest(self, var: torch.Tensor, threshold: float,
                 skip: BnStats | None = None) -> int | None:
        return _best([math.inf if e.stats is skip else variance_divergence(e.key_var, var)
                      for e in self.entries], threshold)

    def _restart_watch(self) -> None:
        self.watch.clear()
        self._pending, self._pending_frames = None, 0
        self._starts.clear()

    def _nearest(self, mean: torch.Tensor, var: torch.Tensor) -> int | None:
        return _best([jeffreys(e.key_mean, e.key_var, mean, var) for e in self.entries],
                     self.threshold)

    def _remember(self, entry: RecallEntry) -> None:
        same = self._nearest(entry.key_mean, entry.key_var)
        if same is not None:
            del self.entries[same]
        self.entries.append(entry)
        if len(self.entries) > self.capacity:
            del self.entries[0]

    def _lookup(self, mean: torch.Tensor, var: torch.Tensor) -> BnStats | None:
        return self._take(self._nearest(mean, var))

    def _take(self, hit: int | None, recalled: BnStats | None = None) -> BnStats | None:
        """Entry ``hit``'s statistics, counted as a recall (unless they are ``recalled``) and
        moved to most recently used."""
        if hit is None:
            return None
        entry = self.entries.pop(hit)
        self.entries.append(entry)
        self.recalls += entry.stats is not recalled
        return entry.stats

    def export(self) -> tuple[tuple[torch.Tensor, torch.Tensor] | None,
                              tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
        """The entries stacked oldest first: keys ``([R, C], [R, C])`` and per BatchNorm layer
        ``([R, n], [R, n])``; ``(None, ())`` when empty."""
        with self._lock:
            entries = list(self.entries)
        if not entries:
            return None, ()
        keys = (torch.stack([e.key_mean for e in entries]),
                torch.stack([e.key_var for e in entries]))
        stats = tuple((torch.stack([e.stats[i][0] for e in entries]),
                       torch.stack([e.stats[i][1] for e in entries]))
                      for i in range(len(entries[0].stats)))
        return keys, stats

    def load(self, keys: tuple[torch.Tensor, torch.Tensor] | None,
             stats: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> None:
        """Replace the entries by :meth:`export`'s tensors (validated by the caller) and clear
        the watch, so the next frames start a domain estimate of their own."""
        count = 0 if keys is None else keys[0].shape[0]
        entries = [RecallEntry(keys[0][r], keys[1][r], tuple((m[r], v[r]) for m, v in stats))
                   for r in range(count)]
        with self._lock:
            self.entries = entries[-self.capacity:]
            self._restart_watch()

    def clear(self) -> None:
        with self._lock:
            self.entries = []
            self.recalls = 0
            self._restart_watch()

    @property
    def nbytes(self) -> int:
        """Memory of the stored entries (float32)."""
        return sum(4 * (e.key_mean.numel() + e.key_var.numel()
                        + sum(m.numel() + v.numel() for m, v in e.stats)) for e in self.entries)


def _best(distances: list[float], threshold: float) -> int | None:
    """The index of the smallest distance, if within ``threshold``."""
    if not distances:
        return None
    best = min(range(len(distances)), key=distances.__getitem__)
    return best if distances[best] <= threshold else None
