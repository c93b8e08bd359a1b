"""The shift gate: adapt only while the input does not look like the source, and notice when
the shifted domain changes (no-harm adaptation, docs/METHOD.md §10).

A camera mostly sees conditions close to the training data, and its frames are correlated (few
classes at a time, each view held for several frames). Test statistics gathered from such
frames replace the source statistics by a noisier estimate of the same thing, and cost
accuracy. The gate keeps the source model while the stream looks like the source and lets
adaptation act only once it does not, with a false-alarm rate calibrated on clean images.

Every classified frame brings its stem statistics (:class:`~.features.EarlyStats`, measured in
its own prediction pass) and the entropy of its prediction. Every ``hop`` frames the last
``window`` frames are tested against the pack's clean reference
(:class:`~zoa_ros.core.model.shift_reference.ShiftReference`), at the thresholds for windows of
``window // dwell`` distinct images (a camera that shows a new view every ``dwell`` frames):

* **stem test** - the divergence of the window's pooled stem statistics from the clean ones;
* **entropy test** - the mean entropy of the source model's predictions over the window (only
  while the source model classified all of them): catches shifts the stem does not see (an
  elastic warp keeps every local pixel statistic);
* **change test** (while adapting) - the divergence between the scene variances
  (:func:`~zoa_ros.core.model.shift_reference.scene_variance`) of the window and of the
  window before it: a new shifted domain replaces the previous one; and a *fast* one, the
  newest ``fast_window`` frames against the window before them at the threshold for that
  few images, which sees a strong change within a few frames.

The opening tests run at ``false_alarm / 2`` each, so on clean class-ordered windows the gate
opens by mistake at most at ``false_alarm`` of the tests; each change test at
``false_alarm``.
States and events:

* ``source`` - the source model classifies; either opening test firing -> ``adapt``
  (``opened``; ``resumed`` when the window is no further from the last adapted one than the
  change test allows: the gate closed for a moment inside one domain);
* ``adapt`` opened by the stem test, the newest ``fast_window`` frames looking like a typical
  clean view (their divergence below the ``close_quantile`` of clean windows of that size;
  ``fast_source``) - the source model classifies, no step runs and no frame is folded, until a
  test finds them shifted again: the gate stays open (its windows, history and trust go on), but
  a shift too mild to tell a few frames from clean ones is not worth normalising them with test
  statistics over a few related views, and clean input after a shift gets the source model
  after ``fast_window`` frames instead of a closing window;
* ``adapt``, one frame about to be classified nearer the clean reference than the newest
  ``fast_window`` frames, or those frames looking clean (:meth:`ShiftGate.nearer_source`, asked
  by the method right after the frame's stem; ``frame_source``) - the source model classifies
  that frame and it is not folded: clean input after a shift gets the source model from its
  first frame;
* ``adapt`` opened by the stem test - the last ``close_window`` frames looking like a typical
  clean window (their divergence below the ``close_quantile`` of the clean windows of that
  size: a shorter window, so the source model is back soon after a shift ends) -> ``source``
  (``closed``; the next opening test waits for a window of frames after the closing);
* ``adapt``, the change test firing -> ``adapt`` in a new domain (``changed``);
* ``adapt`` opened by the entropy test - the stem cannot say when such a shift ends, so every
  ``probe_every`` frames the gate goes back to ``source`` for one window (``probe``) and
  re-runs the tests there: firing again resumes adaptation where it stood (``resumed``),
  otherwise the gate stays ``source`` (``closed``);
* ``settled`` - a whole window of frames since the last ``opened`` or ``changed``: the first
  window that holds only the new domain (its key, :meth:`ShiftGate.key`, is the one to look a
  remembered domain up with).

What the method does on each event (restart or recall its statistics, remember a domain, clear
its history) is up to it. The gate's state changes only between frames, never inside a forward
pass.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import torch

from zoa_ros.core.model.features import EarlyStats
from zoa_ros.core.model.shift_reference import (
    CHANGE,
    ENTROPY,
    STEM,
    ShiftReference,
    jeffreys,
    scene_variance,
    variance_divergence,
)

OPENED, CLOSED, PROBE, RESUMED = "opened", "closed", "probe", "resumed"
CHANGED, SETTLED = "changed", "settled"

Key = tuple[torch.Tensor, torch.Tensor]   # a domain's key: (mean of frame means, scene variance)


@dataclass(frozen=True)
class GateConfig:
    window: int = 32            # frames per opening test
    hop: int = 4                # frames between tests
    dwell: int = 4              # frames per distinct view the thresholds assume
    false_alarm: float = 0.01   # on clean windows, both opening tests together
    entropy_test: bool = True
    probe_every: int = 256      # frames of entropy-opened adaptation between probes
    close_window: int = 16      # frames of the closing test
    close_quantile: float = 0.9  # closes below this quantile of clean windows' divergence
    change_test: bool = True    # notice a new shifted domain while adapting
    fast_window: int = 8        # frames of the fast change test (a strong change, seen early)
    fast_source: bool = True    # the source model classifies while the newest fast_window
    #                             frames look clean (the gate stays open)
    frame_source: bool = True   # ... and a frame nearer the clean reference than those frames

    def validate(self) -> None:
        if self.window < 2 or self.hop < 1 or self.dwell < 1:
            raise ValueError("gate_window must be >= 2, gate_hop and gate_dwell >= 1")
        if not 2 <= self.close_window <= self.window:
            raise ValueError("gate_close_window must be in [2, gate_window]")
        if not 2 <= self.fast_window <= self.window:
            raise ValueError("gate_fast_window must be in [2, gate_window]")
        if not 0.0 < self.close_quantile < 1.0:
            raise ValueError(f"gate_close_quantile must be in (0, 1), not "
                             f"{self.close_quantile}")
        if not 0.0 < self.false_alarm < 1.0:
            raise ValueError(f"gate_false_alarm must be in (0, 1), not {self.false_alarm}")
        if self.probe_every < self.window:
            raise ValueError("gate_probe_every must be at least gate_window")


@dataclass(frozen=True)
class _Frame:
    stem: EarlyStats
    entropy: float
    source: bool   # classified by the source model


class ShiftGate:
    """Source-or-adapt decision and domain changes from stem statistics and prediction
    entropy; thread-safe."""

    def __init__(self, reference: ShiftReference, config: GateConfig | None = None) -> None:
        self.config = config = config or GateConfig()
        config.validate()
        self.reference = reference
        self.window_images = reference.window_images(config.window, config.dwell)
        alpha = config.false_alarm / 2
        self.stem_threshold = reference.threshold(STEM, self.window_images, alpha)
        self.entropy_threshold = reference.threshold(ENTROPY, self.window_images, alpha)
        self.change_threshold = reference.threshold(CHANGE, self.window_images,
                                                    config.false_alarm)
        self.fast_images = reference.window_images(config.fast_window, config.dwell)
        self.fast_threshold = reference.threshold(CHANGE, self.fast_images, config.false_alarm)
        self.fast_stem_threshold = reference.threshold(STEM, self.fast_images, alpha)
        self.close_images = reference.window_images(config.close_window, config.dwell)
        self.close_threshold = reference.threshold(STEM, self.close_images,
                                                   1.0 - config.close_quantile)
        self.source_threshold = reference.threshold(STEM, self.fast_images,
                                                    1.0 - config.close_quantile)
        self.frame_threshold = reference.threshold(STEM, 1, 1.0 - config.close_quantile) \
            if 1 in reference.window_sizes else None   # packs before the 1-photo null: none
        self._mean = reference.stem_mean.double()
        self._var = reference.stem_var.double()
        self._frames: deque[_Frame] = deque(maxlen=2 * config.window)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._frames.clear()
            self._since_test = 0
            self._adapting = False              # open: adapting, or resting (below)
            self._resting = False               # open, the newest frames look clean
            # while open: the newest fast_window frames pooled, and whether they look clean
            # (kept by observe, off the classifying thread; read by nearer_source)
            self._fast: tuple[torch.Tensor, torch.Tensor, bool] | None = None
            self._reason: str | None = None     # STEM or ENTROPY while adapting or probing
            self._probing = False
            self._since_probe = 0
            self._since_event = 0               # frames since opened / changed / resumed
            self._adapted: Key | None = None    # the last adapted domain's key, when closed
            self._keys: deque[Key] = deque(maxlen=self.config.window // self.config.hop + 1)
            self.tests = self.openings = self.changes = self.frames_adapting = 0
            self.frames_resting = 0
            self.last_divergence: float | None = None
            self.last_entropy: float | None = None
            self.last_change: float | None = None

    @property
    def adapting(self) -> bool:
        """Whether the method should classify with its adapted state (and adapt) now."""
        return self._adapting and not self._resting

    @property
    def stem_sees(self) -> bool:
        """Whether the gate is open on a shift the stem statistics show (opened by the stem
        test, or seen by it since); ``False`` for one only the source model's entropy showed."""
        return self._adapting and self._reason == STEM

    @property
    def open(self) -> bool:
        """Whether the input is taken as shifted (adapting, or resting on a few frames that
        look clean): the method keeps its domain's history and trust going."""
        return self._adapting

    def key(self, frames: int | None = None, skip: int = 0) -> Key | None:
        """The key of ``frames`` (default: a window) frames, ending ``skip`` frames ago."""
        frames = frames or self.config.window
        with self._lock:
            recent = list(self._frames)[-(frames + skip):len(self._frames) - skip]
        if len(recent) < frames:
            return None
        return _key([f.stem for f in recent])

    def fast_key(self) -> Key | None:
        """The key of the newest ``fast_window`` frames if all came after the last opening or
        change (at the event itself the newest frames may still mix in the previous input) and
        they alone already look shifted (their stem divergence from the clean reference above
        the opening threshold for that few images), else ``None``: an early key to look a
        remembered domain up with, before a whole window of the new domain is in
        (``settled``)."""
        fast = self.config.fast_window
        with self._lock:
            if len(self._frames) < fast or self._since_event < fast:
                return None
            recent = self._recent(fast)
            if self._divergence(recent) <= self.fast_stem_threshold:
                return None
        return _key(recent)

    def nearer_source(self, stem: EarlyStats, typical: bool = False) -> bool:
        """Whether a frame (or batch) about to be classified while adapting should go to the
        source model: (``frame_source``) it is nearer the clean reference than the newest
        ``fast_window`` frames (its stem divergence from the clean statistics at most that from
        theirs), or those frames look clean themselves - clean input, or a frame the shift left
        alone; the newest few frames, not the window: after a change of shifted domain they
        hold the new one within a few frames. With ``typical`` (the method's call: the shift
        does not confuse the source model) also a frame that :meth:`looks_typical`. On the
        classifying thread: two divergences, the pooling is done by :meth:`observe`."""
        with self._lock:
            fast = self._fast if self.adapting else None
        if fast is None:
            return False
        mean, var = stem.mean.double(), stem.var.double()
        from_clean = jeffreys(self._mean, self._var, mean, var)
        if self.config.frame_source:
            window_mean, window_var, window_clean = fast
            if window_clean or from_clean <= jeffreys(window_mean, window_var, mean, var):
                return True
        return typical and self._typical(from_clean)

    def looks_typical(self, stem: EarlyStats) -> bool:
        """Whether one frame's stem statistics are as close to the clean reference as a
        typical clean photo's (below the ``close_quantile`` of single clean photos; never with
        a pack that has no 1-photo null). A weak witness on its own - some shifts, noise among
        them, leave most single frames that close - which the method combines with what it
        knows of the domain."""
        return self._typical(self._from_clean(stem))

    def _typical(self, clean_divergence: float) -> bool:
        return self.frame_threshold is not None and clean_divergence <= self.frame_threshold

    def observe(self, stem: EarlyStats, entropy: float, rested: bool = False) -> str | None:
        """One classified frame (its stem statistics and prediction entropy, classified in the
        current state, or by the source model though adapting when ``rested``:
        :meth:`nearer_source`); the event it caused, if any."""
        with self._lock:
            event = self._observe(stem, entropy, rested)
            self._fast = self._fast_frames() if self._adapting else None
            return event

    def _observe(self, stem: EarlyStats, entropy: float, rested: bool) -> str | None:
        adapting = self.adapting and not rested
        self._frames.append(_Frame(stem, float(entropy), not adapting))
        self.frames_adapting += adapting
        self.frames_resting += self._adapting and not adapting
        self._since_test += 1
        self._since_event += 1
        if self._adapting and self._since_event == self.config.window:
            return SETTLED
        if self._adapting and self._reason == ENTROPY:
            self._since_probe += 1
            if self._since_probe >= self.config.probe_every:
                self._adapting, self._probing, self._since_probe = False, True, 0
                self._resting = False
                self._frames.clear()
                self._since_test = 0
                return PROBE
        if len(self._frames) < self.config.window or self._since_test < self.config.hop:
            return None
        self._since_test = 0
        return self._test()

    def _recent(self, frames: int, skip: int = 0) -> list[EarlyStats]:
        recent = list(self._frames)
        return [f.stem for f in recent[len(recent) - frames - skip:len(recent) - skip]]

    def _divergence(self, frames: list[EarlyStats]) -> float:
        return self._from_clean(_pooled(frames))

    def _from_clean(self, stats: EarlyStats) -> float:
        return jeffreys(self._mean, self._var, stats.mean.double(), stats.var.double())

    def _fast_frames(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The newest ``fast_window`` frames' pooled stem mean and variance, and whether they
        look clean (the resting test: open on the stem test, below the ``close_quantile`` of
        clean windows of that size)."""
        pooled = _pooled(self._recent(self.config.fast_window))
        mean, var = pooled.mean.double(), pooled.var.double()
        clean = self.config.fast_source and self._reason == STEM and \
            jeffreys(self._mean, self._var, mean, var) <= self.source_threshold
        return mean, var, clean

    def _test(self) -> str | None:
        self.tests += 1
        window = self.config.window
        current = self._recent(window)
        divergence = self._divergence(current)
        self.last_divergence = divergence
        if self._adapting:
            return self._test_adapting(current, divergence)
        stem_fires = divergence > self.stem_threshold
        entropy_fires = False
        if self.config.entropy_test and all(f.source for f in list(self._frames)[-window:]):
            self.last_entropy = sum(f.entropy for f in list(self._frames)[-window:]) / window
            entropy_fires = self.last_entropy > self.entropy_threshold
        if not (stem_fires or entropy_fires):
            if self._probing:
                self._probing, self._reason = False, None
                return CLOSED
            return None
        key = _key(current)
        resumed = self._probing or (self._adapted is not None and variance_divergence(
            self._adapted[1], key[1]) <= self.change_threshold)
        self._adapting, self._probing, self._resting = True, False, False
        self._reason = STEM if stem_fires else ENTROPY
        self._since_probe = self._since_event = 0
        if resumed:
            return RESUMED
        self.openings += 1
        return OPENED

    def _test_adapting(self, current: list[EarlyStats], divergence: float) -> str | None:
        window = self.config.window
        if self._reason == ENTROPY and divergence > self.stem_threshold:
            self._reason = STEM          # now the stem sees it too: it says when it ends
        if self._reason == STEM and self._divergence(
                current[-self.config.close_window:]) <= self.close_threshold:
            self._adapting, self._resting, self._reason = False, False, None
            self._keep_adapted_key()
            self._frames.clear()         # the next opening test sees none of the shift
            return CLOSED
        self._keys.append(_key(current))
        fast = self.config.fast_window
        self._resting = self._fast_frames()[2]
        if not self.config.change_test or self._since_event < window + fast:
            return None
        # fast: the newest few frames against the window before them - a strong change
        changed = variance_divergence(scene_variance(self._recent(window, skip=fast)),
                                      scene_variance(self._recent(fast))) > self.fast_threshold
        if not changed and self._since_event >= 2 * window:   # slow: two whole windows
            previous = self._recent(window, skip=window)
            self.last_change = variance_divergence(scene_variance(previous),
                                                   scene_variance(current))
            changed = self.last_change > self.change_threshold
        if not changed:
            return None
        self.changes += 1
        self._since_event = 0
        self._keep_adapted_key()
        return CHANGED

    def _keep_adapted_key(self) -> None:
        """The domain that ended, as a window before its end (its last frames still in it):
        what a re-opening is compared with (``resumed``); kept from before when the domain
        lasted less than a window."""
        if len(self._keys) == self._keys.maxlen:
            self._adapted = self._keys[0]
        self._keys.clear()

    def summary(self) -> dict:
        return {"adapting": self.adapting, "open": self._adapting, "reason": self._reason,
                "tests": self.tests, "openings": self.openings, "changes": self.changes,
                "frames_adapting": self.frames_adapting, "frames_resting": self.frames_resting,
                "window_images": self.window_images,
                "stem_threshold": self.stem_threshold, "close_threshold": self.close_threshold,
                "source_threshold": self.source_threshold,
                "frame_threshold": self.frame_threshold,
                "change_threshold": self.change_threshold, "fast_threshold": self.fast_threshold,
                "fast_stem_threshold": self.fast_stem_threshold,
                "entropy_threshold": self.entropy_threshold,
                "last_divergence": self.last_divergence, "last_entropy": self.last_entropy,
                "last_change": self.last_change}


def _pooled(frames: list[EarlyStats]) -> EarlyStats:
    pooled = frames[0]
    for frame in frames[1:]:
        pooled = pooled + frame
    return pooled


def _key(frames: list[EarlyStats]) -> Key:
    return (torch.stack([f.mean.double() for f in frames]).mean(dim=0),
            scene_variance(frames))
