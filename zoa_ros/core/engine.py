"""The runtime every front end drives (ROS node, bag replay, offline evaluator).

It owns one quantized model, its preprocessing and one adaptation method, and does four things:
classify frames, buffer them, decide when to adapt, and count what that costs.

Modes (``EngineConfig.mode``):

* ``"batch"`` - the paper's protocol: :meth:`Engine.run_batch` classifies a batch and then takes
  one adaptation step on that same batch (``method.forward_and_adapt``).
* ``"streaming"`` - the robot's reality: :meth:`Engine.predict` classifies frames as they arrive
  (``method.predict``), ``observe=True`` (or :meth:`Engine.observe`) keeps their preprocessed
  tensors in a buffer, and :meth:`Engine.maybe_adapt` takes one step on the buffer once
  ``interval_frames`` new frames arrived (frame count, not wall time) and at least
  ``min_period_s`` passed on the injected clock (so ROS sim time works).

Threads: :meth:`predict` may run on one thread while :meth:`maybe_adapt` runs on another. The
engine's own lock only guards counters and the buffer (never a forward pass); adaptation steps,
resets and bank loads are serialised by a second lock that :meth:`predict` never takes. The
method is responsible for publishing its new parameters with one atomic swap.

Backends (``EngineConfig.backend``, :mod:`zoa_ros.core.backend`): frames are classified by the
method on the torch reference (``torch``, the simulation) or by the int8 export on ONNX
Runtime (``onnxruntime``; ``auto`` picks it where it works). With the int8 runtime the torch
reference still adapts, in :meth:`Engine.maybe_adapt` (the adaptation thread): it replays the
observed frames (``stats_every`` at a time, by default each as soon as it can) through the
method's observed prediction, so statistics that follow the frames take them in as they would
have at each prediction, and at each step it adapts; after either it hands the reference's
normalizations and activation shift to the backend, which swaps them in with one assignment.
Resets and bank loads do the same.

Randomness comes from one CPU ``torch.Generator`` seeded from the config (handed to the method
and used for buffer sampling), so a seed draws the same numbers on any device; the device comes
from the config; nothing here imports rclpy.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.backend.choose import check_backend_name, choose_backend
from zoa_ros.core.backend.reference import prediction_norms, prediction_shift
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.prediction import ClassScore, entropy, top_k
from zoa_ros.core.model.preprocess import Preprocessor, to_rgb_array
from zoa_ros.core.quant.model import first_conv_name
from zoa_ros.core.runtime.allocator import keep_freed_memory
from zoa_ros.core.runtime.prediction_first import PredictionFirst, StepAborted

log = logging.getLogger(__name__)

MODES = ("batch", "streaming")
# Observed frames per statistics replay with the int8 runtime: 1 = as soon as the adaptation
# thread is free (the frames rule exactly when it keeps up; otherwise the frames that piled up
# go in one batch). Every 8 cost norm 1.3 points on 100-frame domains (docs/lab/int8.md §8.3).
STATS_EVERY = 1
REPLAY_CHUNK = 16   # frames per replay forward (memory: all BatchNorm inputs of a chunk)

Frames = torch.Tensor | np.ndarray | Sequence[np.ndarray]
MethodFactory = Callable[[str, nn.Module, ModelPack, dict, torch.Generator], AdaptMethod]


class MalformedFrame(ValueError):
    """A frame that cannot be classified (wrong dtype or shape); counted in the stats."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs; every field has a safe default."""

    method: str = "none"
    method_config: Mapping = field(default_factory=dict)
    seed: int = 0
    mode: str = "streaming"
    batch_size: int = 64              # frames per adaptation step
    interval_frames: int | None = None  # adapt after this many new frames (default batch_size)
    buffer_size: int | None = None    # frames kept for adaptation (default batch_size)
    min_frames: int = 16              # refuse to adapt on fewer frames (counted as skipped)
    min_period_s: float = 0.0         # at least this long between steps, on the engine clock
    stride: int = 1                   # buffer every stride-th observed frame
    shuffle: bool = False             # adapt on a random subset of the buffer, else the newest
    top_k: int = 5
    device: str = "cpu"
    warmup: bool = True               # one throw-away forward before the method is created
    adapt_enabled: bool = True
    keep_freed_memory: bool = True    # process-wide malloc setting (core/runtime/allocator.py)
    # A step on another thread waits, before each layer, up to this long for a prediction in
    # flight to finish (classification first; core/runtime/prediction_first.py). 0: it never waits.
    max_pause_s: float = 0.0
    # What classifies: "torch" (the simulation), "onnxruntime" (the int8 export) or "auto"
    # (the int8 runtime where it works, else torch with a warning); core/backend/choose.py.
    backend: str = "torch"
    int8_model: str | None = None     # an export file (zoa-ros export); None: export at start
    backend_threads: int = 1          # threads of the int8 runtime's session
    # Statistics that follow the frames (norm, zoa): fold the observed frames in groups of this
    # many, replayed through the torch reference by maybe_adapt (the int8 runtime always does:
    # it classifies elsewhere; default STATS_EVERY there). None: at each prediction (torch).
    # Set it with torch to measure what the grouping costs.
    stats_every: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_backend_name(self.backend)
        if self.stats_every is not None and self.stats_every < 1:
            raise ValueError(f"stats_every must be >= 1, got {self.stats_every}")
        for name in ("batch_size", "min_frames", "stride", "top_k", "backend_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.interval_frames is not None and self.interval_frames < 1:
            raise ValueError(f"interval_frames must be >= 1, got {self.interval_frames}")
        if self.buffer_size is not None and self.buffer_size < self.batch_size:
            raise ValueError(f"buffer_size ({self.buffer_size}) must be >= batch_size "
                             f"({self.batch_size})")
        for name in ("min_period_s", "max_pause_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def interval(self) -> int:
        return self.interval_frames or self.batch_size

    @property
    def capacity(self) -> int:
        return self.buffer_size or self.batch_size

    def to_dict(self) -> dict:
        out = asdict(self)
        out["method_config"] = dict(self.method_config)
        return out


@dataclass(frozen=True)
class Prediction:
    """One frame's result: top-k classes, the call's latency, the domain and the step count."""

    top: list[ClassScore]
    latency_ms: float
    domain_id: int | None
    adapt_steps: int   # adaptation steps whose parameters produced this prediction
    entropy: float = 0.0  # of the full softmax, nats (uncertainty; no labels needed)

    @property
    def class_index(self) -> int:
        return self.top[0].class_index

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def score(self) -> float:
        return self.top[0].score

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AdaptReport:
    """What one adaptation step did."""

    step: int
    frames: int
    ms: float
    domain_id: int | None
    domain_changed: bool
    bank_entries: int
    info: object | None = None   # what the method's adapt() returned (ZOA: its StepInfo)
    rolled_back: bool = False    # the method undid the step (a non-finite loss or parameters)


@dataclass(frozen=True)
class EngineStats:
    frames: int                 # frames classified
    frames_observed: int        # frames offered to the adaptation buffer
    frames_adapted: int         # frames used by adaptation steps
    buffered: int               # frames waiting in the buffer now
    buffer_dropped: int         # buffered frames pushed out before they were adapted on
    adapt_steps: int
    adapt_rolled_back: int      # steps the method undid: non-finite loss or parameters
    last_rollback: str          # why the last of them was undone
    adapt_skipped: int          # adaptation due, but fewer than min_frames buffered
    adapt_deferred: int         # adaptation due, but min_period_s not yet over
    forward_passes: int         # full-model passes as the method counts them (a batch = 1)
    backward_passes: int
    samples_forwarded: int      # frames pushed through the network's stem, all passes together
    forward_per_frame: float    # samples_forwarded / frames
    domain_changes: int
    domain_id: int | None
    bank_entries: int
    bank_bytes: int
    recall_entries: int         # domains in the statistics memory (ZOA stats_recall)
    recalls: int                # times a revisited domain got its statistics back
    last_step_ms: float
    mean_step_ms: float
    mean_predict_ms: float      # per predict()/run_batch() call
    adapt_paused_s: float       # adaptation steps waiting for predictions in flight (max_pause_s)
    malformed: int
    resets: int
    backend: str = "torch"      # what classified the frames
    backend_updates: int = 0    # parameter sets handed to the int8 runtime
    stats_frames_dropped: int = 0   # observed frames never folded (replays fell behind)
    stats_frames_replayed: int = 0  # observed frames replayed on the torch reference
    replay_ms_per_frame: float = 0.0    # that replay + handing the result to the backend
    shift_gate: str = ""        # ZOA's shift gate: closed | adapting | resting ("" without one)
    gate_openings: int = 0      # times it opened
    frames_gate_adapting: int = 0   # frames it observed while adapting

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Buffered:
    """A buffered frame and the forward record of the predict call (``group``) it came from;
    it was frame ``index`` of ``size``."""

    frame: torch.Tensor
    record: object | None
    group: int
    index: int
    size: int


def _records(batch: Sequence[_Buffered]) -> list[object] | None:
    """The predict records covering exactly ``batch``, in order, or ``None`` when some frame
    has none or only part of a multi-frame predict call was taken."""
    records, i = [], 0
    while i < len(batch):
        first = batch[i]
        group = batch[i:i + first.size]
        if (first.record is None or first.index != 0 or len(group) != first.size
                or any(b.group != first.group or b.index != k for k, b in enumerate(group))):
            return None
        records.append(first.record)
        i += first.size
    return records


def _stem(model: nn.Module) -> nn.Module:
    """The module every full forward pass starts with (counted to get frames per pass)."""
    try:
        return model.get_submodule(first_conv_name(model))
    except (ValueError, AttributeError):
        return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def create_method(name: str, model: nn.Module, pack: ModelPack, config: dict,
                  generator: torch.Generator) -> AdaptMethod:
    """The registry's method ``name`` (imported lazily: the registry imports every method)."""
    from zoa_ros.core.adapt import registry
    return registry.create(name, model, pack, config, generator)


def streaming_defaults(name: str) -> dict:
    """Settings method ``name`` needs to classify single frames (see ``AdaptMethod``)."""
    from zoa_ros.core.adapt import registry
    return dict(registry.method_class(name).streaming_defaults)


class Engine:
    """Classify, buffer, adapt, count. See the module docstring for modes and threading."""

    def __init__(self, pack: ModelPack, config: EngineConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 method_factory: MethodFactory | None = None, **options: object) -> None:
        config = replace(config or EngineConfig(), **options)  # type: ignore[arg-type]
        self.config = config
        self.pack = pack
        self.clock = clock
        if config.keep_freed_memory:
            keep_freed_memory()   # before the model's first forward pass
        self.device = torch.device(config.device)
        self.preprocessor = Preprocessor(pack.data_config)
        # On the CPU whatever the device: the same seed draws the same numbers on CPU and GPU.
        self.generator = torch.Generator().manual_seed(config.seed)
        model = pack.build_model().to(self.device)
        if config.warmup:
            with torch.no_grad():
                model(torch.zeros(1, *self.preprocessor.input_size, device=self.device))
        self.model = model
        method_config = dict(config.method_config)
        if method_factory is None and config.mode == "streaming":
            method_config = {**streaming_defaults(config.method), **method_config}
        factory = method_factory or create_method
        self.method = factory(config.method, model, pack, method_config, self.generator)
        self._lock = threading.Lock()        # counters and buffer only; held for microseconds
        self._adapt_lock = threading.Lock()  # one adaptation step / reset / bank load at a time
        self._buffer: collections.deque[_Buffered] = collections.deque()
        self._since_adapt = 0
        self._last_adapt_at: float | None = None
        self._deferred_pending = False
        self._enabled = config.adapt_enabled
        self._counts = collections.Counter()
        self._last_step_ms = 0.0
        self._last_rollback = ""
        self._step_ms_total = 0.0
        self._predict_ms_total = 0.0
        self._replay_ms_total = 0.0
        self._stem_hook = _stem(model).register_forward_pre_hook(self._count_samples)
        self._first = PredictionFirst(config.max_pause_s if self.method.adapt_may_pause else 0.0,
                                      abortable=self.method.adapt_may_pause)
        choice = choose_backend(config.backend, pack, model, self.method, config.mode,
                                config.int8_model, config.backend_threads)
        self.backend = choice.backend
        self.backend_name = choice.name
        self.backend_warning = choice.warning   # why "auto" classifies with torch, if it does
        every = config.stats_every or (STATS_EVERY if self.backend is not None else None)
        # Observed frames not yet folded into statistics that follow the frames (replayed).
        self._stats_every = every if every and self.method.follows_frames else None
        self._unfolded: collections.deque[torch.Tensor] = collections.deque(
            maxlen=max(every or 1, config.capacity))
        if self.backend is not None:
            self._sync_backend()

    @classmethod
    def from_pack_file(cls, path: str | Path, **options: object) -> Engine:
        return cls(ModelPack.load(path), **options)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def labels(self) -> list[str]:
        return self.pack.labels

    @property
    def domain_id(self) -> int | None:
        value = getattr(self.method, "domain_id", None)
        return None if value is None else int(value)

    @property
    def domain_changes(self) -> int:
        return int(getattr(self.method, "domain_changes", 0) or 0)

    @property
    def adapt_enabled(self) -> bool:
        return self._enabled

    def set_adaptation(self, enabled: bool) -> None:
        """Switch adaptation on or off; while off, frames are classified but not buffered."""
        with self._lock:
            self._enabled = bool(enabled)
            if not enabled:
                self._buffer.clear()
                self._unfolded.clear()
                self._since_adapt = 0

    # ---- input --------------------------------------------------------------------------------
    def preprocess(self, frames: Frames) -> torch.Tensor:
        """A normalized NCHW batch on the engine's device.

        ``frames``: a float tensor (NCHW or CHW, already normalized), one uint8 HxWx3 / HxW
        array, or a sequence of them (resized and center-cropped by the pack's preprocessing).
        """
        if isinstance(frames, torch.Tensor):
            x = frames.unsqueeze(0) if frames.dim() == 3 else frames
            if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
                self.note_malformed(1)
                raise MalformedFrame(f"expected a float N x 3 x H x W tensor, got "
                                     f"{x.dtype} {tuple(x.shape)}")
            return x.to(self.device)
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and frames.dtype == np.uint8:
            frames = [frames]
        images = []
        for frame in frames:
            try:
                images.append(to_rgb_array(frame))
            except (ValueError, TypeError) as e:
                self.note_malformed(1)
                raise MalformedFrame(str(e)) from e
        if not images:
            raise MalformedFrame("no frames given")
        return self.preprocessor(images).to(self.device)

    def note_malformed(self, count: int = 1) -> None:
        """Count frames the caller could not even convert (e.g. an unsupported encoding)."""
        with self._lock:
            self._counts["malformed"] += count

    # ---- streaming ----------------------------------------------------------------------------
    def predict(self, frames: Frames, *, observe: bool = False) -> list[Prediction]:
        """Classify with the current parameters; with ``observe`` also buffer the frames, with
        the method's record of this forward pass so the adaptation step may reuse it."""
        with self._first.predicting():
            x = self.preprocess(frames)
            steps = self._counts["adapt_steps"]
            start = time.perf_counter()
            with torch.no_grad():
                if self.backend is not None:
                    logits, record = self.backend.predict(x), None
                elif observe and self._enabled and self._stats_every is None:
                    logits, record = self.method.predict_with_record(x)
                else:
                    logits, record = self.method.predict(x), None
            results = top_k(logits.cpu(), self.pack.labels, self.config.top_k)
            ms = (time.perf_counter() - start) * 1e3
        domain = self.domain_id
        with self._lock:
            self._counts["frames"] += len(x)
            self._counts["predict_calls"] += 1
            if self.backend is not None:   # a forward pass the stem hook does not see
                self._counts["samples_forwarded"] += len(x)
                self._counts["backend_forwards"] += 1
            self._predict_ms_total += ms
        if observe:
            self.observe(x, record)
        return [Prediction(r, ms, domain, steps, h)
                for r, h in zip(results, entropy(logits.cpu()))]

    def settle(self) -> None:
        """Finish what the last observed prediction left for later (folding its frames into the
        running BatchNorm statistics), e.g. after publishing its result; the next prediction
        does it first otherwise, with the same outcome."""
        self.method.settle()

    def observe(self, frames: Frames, record: object | None = None) -> None:
        """Offer classified frames to the adaptation buffer (a no-op while adaptation is off).

        ``record``: what ``method.predict_with_record`` returned for exactly these frames.
        """
        x = self.preprocess(frames)
        with self._lock:
            if not self._enabled:
                return
            self._counts["observe_calls"] += 1
            group = self._counts["observe_calls"]
            for i, frame in enumerate(x):
                if self._stats_every is not None:
                    if len(self._unfolded) == self._unfolded.maxlen:
                        self._counts["stats_frames_dropped"] += 1
                    self._unfolded.append(frame.detach().clone() if len(x) > 1 else
                                          frame.detach())
                seen = self._counts["frames_observed"]
                self._counts["frames_observed"] += 1
                self._since_adapt += 1
                if seen % self.config.stride:
                    continue
                if len(self._buffer) >= self.config.capacity:
                    self._buffer.popleft()
                    self._counts["buffer_dropped"] += 1
                frame = frame.detach().clone() if len(x) > 1 else frame.detach()
                self._buffer.append(_Buffered(frame, record, group, i, len(x)))

    def maybe_adapt(self, *, force: bool = False) -> AdaptReport | None:
        """One adaptation step on the buffer if one is due; ``None`` otherwise.

        Due = ``interval_frames`` frames observed since the last step (or ``force``, or the
        method's :attr:`~zoa_ros.core.adapt.base.AdaptMethod.step_wanted`) and
        ``min_period_s`` passed since the last step (ignored with ``force``). Fewer than
        ``min_frames`` buffered: the step is skipped and counted, the frames stay buffered.
        Returns ``None`` at once if another thread is adapting.
        """
        if not self._adapt_lock.acquire(blocking=False):
            return None
        try:
            try:
                with self._first.adapting():
                    self._fold_observed()
                batch = self._take_batch(force)
                if batch is None:
                    return None
                x = torch.stack([b.frame for b in batch])
                before = self.domain_changes
                start = time.perf_counter()
                with self._first.adapting():
                    self._fold_observed(force=True)
                    info = self.method.adapt(x, _records(batch))
                    if self.backend is not None:
                        self._sync_backend()
            except StepAborted:   # abort_adaptation(): the method undid the step
                with self._lock:
                    self._counts["adapt_aborted"] += 1
                return None
            ms = (time.perf_counter() - start) * 1e3
            return self._finish_step(len(x), ms, before, info)
        finally:
            self._adapt_lock.release()

    def _fold_observed(self, force: bool = False) -> None:
        """Replay the observed frames not yet folded (``stats_every`` of them, or any with
        ``force``) through the method's observed prediction on the torch reference, so that
        statistics that follow the frames take them in, in order; then hand the result to the
        backend. Caller holds the adaptation lock."""
        with self._lock:
            if self._stats_every is None or not self._unfolded or (
                    len(self._unfolded) < self._stats_every and not force):
                return
            frames = list(self._unfolded)
            self._unfolded.clear()
        start = time.perf_counter()
        # In chunks (a replay keeps every BatchNorm input of its frames), or frame by frame for
        # a method whose observations count frames (ZOA's shift gate).
        chunk = 1 if self.method.observes_frame_by_frame else REPLAY_CHUNK
        with torch.no_grad():
            for i in range(0, len(frames), chunk):
                self.method.predict_with_record(torch.stack(frames[i:i + chunk]))
                self.method.settle()
        self._sync_backend()
        with self._lock:
            self._counts["stats_replays"] += 1
            self._counts["stats_frames_replayed"] += len(frames)
            self._replay_ms_total += (time.perf_counter() - start) * 1e3

    def abort_adaptation(self, on: bool = True) -> None:
        """Abandon the adaptation step in progress at its next layer, and any later one until
        called with ``on`` False (methods that can pause their steps, ZOA: the method undoes
        the step; a front end that stops need not wait for it)."""
        self._first.abort(on)

    def _take_batch(self, force: bool) -> list[_Buffered] | None:
        with self._lock:
            early = self._since_adapt < self.config.interval and not force
            if not self._enabled or (early and not self.method.step_wanted):
                return None
            if early and len(self._buffer) < self.config.min_frames:
                return None   # asked for early: wait for the frames, uncounted
            now = self.clock()
            if (not force and self._last_adapt_at is not None
                    and now - self._last_adapt_at < self.config.min_period_s):
                if not self._deferred_pending:
                    self._counts["adapt_deferred"] += 1
                    self._deferred_pending = True
                return None
            self._deferred_pending = False
            self._since_adapt = 0
            if len(self._buffer) < self.config.min_frames:
                self._counts["adapt_skipped"] += 1
                return None
            self._last_adapt_at = now
            frames = list(self._buffer)
            count = min(self.config.batch_size, len(frames))
            if self.config.shuffle:
                picked = torch.randperm(len(frames), generator=self.generator,
                                        device=self.generator.device)[:count]
                keep = set(picked.tolist())
            else:
                keep = set(range(len(frames) - count, len(frames)))
            batch = [f for i, f in enumerate(frames) if i in keep]
            self._buffer = collections.deque(f for i, f in enumerate(frames) if i not in keep)
            return batch

    def _finish_step(self, frames: int, ms: float, changes_before: int,
                     info: object | None = None) -> AdaptReport:
        """Count a step; one the method rolled back (``info.rolled_back``: a non-finite loss or
        parameters) is counted apart, with its reason, and not as a step."""
        bank = self.method.bank_summary()
        rolled_back = bool(getattr(info, "rolled_back", False))
        with self._lock:
            if rolled_back:
                self._counts["adapt_rolled_back"] += 1
                self._last_rollback = str(getattr(info, "reason", ""))
            else:
                self._counts["adapt_steps"] += 1
                self._counts["frames_adapted"] += frames
                self._step_ms_total += ms
            self._last_step_ms = ms
            step = self._counts["adapt_steps"]
        return AdaptReport(step, frames, ms, self.domain_id,
                           self.domain_changes != changes_before, int(bank.get("entries", 0)),
                           info, rolled_back)

    # ---- either mode --------------------------------------------------------------------------
    def process(self, frames: Frames) -> list[Prediction]:
        """One call per arriving batch, in the configured mode: ``run_batch`` in batch mode;
        in streaming mode classify + buffer, then adapt inline if a step is due (a front end
        with an adaptation thread calls ``predict(observe=True)`` and ``maybe_adapt`` instead).
        """
        if self.mode == "batch":
            return self.run_batch(frames)
        results = self.predict(frames, observe=True)
        self.maybe_adapt()
        return results

    # ---- batch --------------------------------------------------------------------------------
    def run_batch(self, frames: Frames) -> list[Prediction]:
        """Batch protocol: classify ``frames``, then take one step on them.

        A batch smaller than ``min_frames`` (or adaptation switched off) is only classified and
        the skipped step counted. The predictions come from the parameters before the step.
        """
        x = self.preprocess(frames)
        if not self._enabled or len(x) < self.config.min_frames:
            if self._enabled:
                with self._lock:
                    self._counts["adapt_skipped"] += 1
            return self.predict(x)
        with self._adapt_lock:
            steps = self._counts["adapt_steps"]
            before = self.domain_changes
            start = time.perf_counter()
            logits = self.method.forward_and_adapt(x)
            results = top_k(logits.cpu(), self.pack.labels, self.config.top_k)
            entropies = entropy(logits.cpu())
            ms = (time.perf_counter() - start) * 1e3
            with self._lock:
                self._counts["frames"] += len(x)
                self._counts["predict_calls"] += 1
                self._predict_ms_total += ms
            self._finish_step(len(x), ms, before, getattr(self.method, "last_step", None))
            domain = self.domain_id
        return [Prediction(r, ms, domain, steps, h) for r, h in zip(results, entropies)]

    # ---- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the source model; drops the buffer. Counters keep running."""
        with self._adapt_lock:
            self.method.reset()
            self._sync_backend()
            with self._lock:
                self._buffer.clear()
                self._unfolded.clear()
                self._since_adapt = 0
                self._last_adapt_at = None
                self._deferred_pending = False
                self._counts["resets"] += 1

    def save_bank(self, path: str | Path, provenance: dict[str, str] | None = None) -> None:
        """Write the method's knowledge bank to ``path`` (atomically; the old file survives a
        failure). Methods without a bank raise ``BankError`` (a ``ValueError``)."""
        from zoa_ros.core.bank import file as bank_file
        with self._adapt_lock:
            bank_file.save(path, self.method, self.pack, provenance)

    def load_bank(self, path: str | Path) -> dict:
        """Load a knowledge bank and return its metadata. A bank for another pack or layout,
        or a damaged file, raises ``BankError`` and leaves the running bank untouched."""
        from zoa_ros.core.bank import file as bank_file
        with self._adapt_lock:
            meta = bank_file.load(path, self.method, self.pack)
            self._sync_backend()
            return meta

    def sync_backend(self) -> None:
        """Hand the method's current state to the int8 runtime (after a change made to the
        method directly, e.g. :func:`zoa_ros.core.controls.reset_to_source`)."""
        with self._adapt_lock:
            self._sync_backend()

    def _sync_backend(self) -> None:
        """The reference's prediction normalizations and shift to the backend (caller holds
        the adaptation lock, or constructs the engine)."""
        if self.backend is None:
            return
        self.method.settle()
        self.backend.apply(prediction_norms(self.model, self.method),
                           prediction_shift(self.method))
        with self._lock:
            self._counts["backend_updates"] += 1

    def stats(self) -> EngineStats:
        costs = self.method.costs
        bank = self.method.bank_summary()
        gate = bank.get("gate") or {}
        with self._lock:
            c = self._counts
            frames, steps, calls = c["frames"], c["adapt_steps"], c["predict_calls"]
            return EngineStats(
                frames=frames, frames_observed=c["frames_observed"],
                frames_adapted=c["frames_adapted"], buffered=len(self._buffer),
                buffer_dropped=c["buffer_dropped"], adapt_steps=steps,
                adapt_rolled_back=c["adapt_rolled_back"], last_rollback=self._last_rollback,
                adapt_skipped=c["adapt_skipped"], adapt_deferred=c["adapt_deferred"],
                forward_passes=costs.forward_passes + c["backend_forwards"],
                backward_passes=costs.backward_passes,
                samples_forwarded=c["samples_forwarded"],
                forward_per_frame=c["samples_forwarded"] / frames if frames else 0.0,
                domain_changes=self.domain_changes, domain_id=self.domain_id,
                bank_entries=int(bank.get("entries", 0)), bank_bytes=int(bank.get("bytes", 0)),
                recall_entries=int(bank.get("recall_entries", 0)),
                recalls=int(bank.get("recalls", 0)),
                last_step_ms=self._last_step_ms,
                mean_step_ms=self._step_ms_total / steps if steps else 0.0,
                mean_predict_ms=self._predict_ms_total / calls if calls else 0.0,
                adapt_paused_s=self._first.paused_s,
                malformed=c["malformed"], resets=c["resets"], backend=self.backend_name,
                backend_updates=c["backend_updates"],
                stats_frames_dropped=c["stats_frames_dropped"],
                stats_frames_replayed=c["stats_frames_replayed"],
                replay_ms_per_frame=self._replay_ms_total / c["stats_frames_replayed"]
                if c["stats_frames_replayed"] else 0.0,
                shift_gate=gate_state(gate), gate_openings=int(gate.get("openings", 0)),
                frames_gate_adapting=int(gate.get("frames_adapting", 0)))

    def close(self) -> None:
        """Remove the engine's hook from the model."""
        self._stem_hook.remove()

    def _count_samples(self, _module: nn.Module, inputs: tuple) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            with self._lock:
                self._counts["samples_forwarded"] += int(inputs[0].shape[0])


def gate_state(gate: dict) -> str:
    """A shift gate's summary as one word: closed, adapting or resting ("" without a gate)."""
    if not gate:
        return ""
    if not gate.get("open"):
        return "closed"
    return "adapting" if gate.get("adapting") else "resting"
