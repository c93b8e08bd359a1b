"""BatchNorm test statistics for single frames, and the helper the baselines use.

Single frames cannot be normalised with their own batch statistics, so streaming inference of a
BatchNorm model uses a *running estimate* of the test statistics, one ``(mean, var)`` per layer,
initialised from the source running buffers and kept current by one of two rules:

* **frames** (``frame_momentum`` ρ_f > 0, the streaming default): every classified frame's
  per-channel input moments at each BatchNorm, from the prediction's own forward pass (no
  extra pass), are folded in as they arrive - :func:`fold_frames_later`, :func:`fold_frames`,
  ``m ← (1 − ρ_f)·m + ρ_f·μ_f``, ``s ← (1 − ρ_f)·s + ρ_f·E_f[x²]`` with ``s = v + m²`` - an
  exponential window of about ``1/ρ_f`` frames over all their pixels (the online update of
  DUA, Mirza et al., CVPR 2022, with a constant momentum). The estimate then lags a domain
  change by tens of frames, not by a whole adaptation batch, and costs no forward pass.
* **batches** (``frame_momentum`` 0): each adaptation batch's mean and unbiased variance,
  measured in an adaptation forward, are folded in with ``stats_momentum`` ρ -
  :func:`fold_batch`; the estimate moves once per adaptation step.

Single frames are then normalised with a *mixture* of the source distribution (weight
``stats_prior`` w) and the running test estimate: ``μ = w·μ_S + (1 − w)·μ_T``,
``σ² = w·σ²_S + (1 − w)·σ²_T + w(1 − w)(μ_T − μ_S)²`` (in the fused BatchNorm; the prior
strength of Schneider et al., NeurIPS 2020, as a fixed weight). A camera sees few scenes at a
time, so a test estimate over the last ~100 frames carries their content as well as the shift;
the blend keeps the source's view of the world (streaming default w = 0.75, measured in
docs/lab/streaming-statistics.md §2.4).

:class:`BatchNormStats` gives the baselines (BN-stat adaptation, T3A, TENT, FOA on CNNs) this
estimate: every ``BatchNorm2d`` of the model is replaced by ZOA's fused BatchNorm with no
adapted affine (:func:`~zoa_ros.core.adapt.fused_norm.fuse_norms` with an empty layer list), so
parameters, buffers and state-dict keys stay those of the source model, gradients still reach
the module's own ``weight``/``bias``, and each forward pass chooses its statistics *per thread*:

* ``batch``   - the statistics of the current batch (the papers' protocol; the estimate is
  neither used nor updated);
* ``running`` - the running estimate above; what single frames are classified with;
* ``source``  - the source running buffers, frozen (eval mode).

The estimate lives in an immutable set published by one reference swap (folds are atomic
read-modify-writes), so a prediction in another thread sees the old or the new estimate, never
a mix. LayerNorm models have no BatchNorm: the helper then does nothing (``active`` is False).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from zoa_ros.core.adapt.fused_norm import fuse_norms
from zoa_ros.core.adapt.params import (
    BATCH,
    RUNNING,
    SOURCE,
    BnStats,
    ForwardContext,
    ParamSet,
    ParamStore,
)

MODES = (BATCH, RUNNING, SOURCE)

STREAMING_REASON = ("BatchNorm normalises with the statistics of the predicted batch "
                    "(bn_stats: batch); single frames need bn_stats: running")

# Settings every BatchNorm method uses in streaming mode (``streaming_defaults``): single frames
# are classified with the running estimate, kept current from the classified frames themselves.
FRAME_MOMENTUM = 0.01
STATS_PRIOR = 0.75
STREAMING_STATS = {"bn_stats": RUNNING, "frame_momentum": FRAME_MOMENTUM,
                   "stats_prior": STATS_PRIOR}

Sink = dict[int, tuple[torch.Tensor, torch.Tensor]]


def fold_batch(stats: BnStats, sink: Sink, rho: float) -> BnStats:
    """Move each layer's ``(mean, var)`` towards an adaptation batch's ``sink`` entry by ``rho``
    (``rho = 1`` replaces it); layers missing from ``sink`` are kept."""
    return tuple(((1 - rho) * m + rho * sink[i][0], (1 - rho) * v + rho * sink[i][1])
                 if i in sink else (m, v) for i, (m, v) in enumerate(stats))


def fold_frames(stats: BnStats, sink: Sink, rho: float) -> BnStats:
    """Fold the frames of one prediction, in order, into the running estimate.

    ``sink[i]`` holds layer ``i``'s per-frame input moments ``(mean, mean of squares)``,
    ``[B, C]`` each (:func:`frame_moments` of a fused BatchNorm's ``frame_sink``). Frame ``b``
    of ``B`` ends up with weight ``ρ(1 − ρ)^(B−1−b)``, the old estimate with ``(1 − ρ)^B``,
    exactly as ``B`` one-frame folds in a row. Layers missing from ``sink`` are kept as they are.

    Runs on every observed frame, so all layers are folded at once, on their channels laid end
    to end: a dozen small kernels in all instead of a dozen per layer (bit for bit the same
    numbers; tested).
    """
    layers = [i for i in range(len(stats)) if i in sink]
    if not layers:
        return tuple(stats)
    m = torch.cat([stats[i][0] for i in layers])
    v = torch.cat([stats[i][1] for i in layers])
    means = torch.cat([sink[i][0] for i in layers], dim=1)
    squares = torch.cat([sink[i][1] for i in layers], dim=1)
    count = means.shape[0]
    powers = torch.arange(count - 1, -1, -1, device=means.device, dtype=means.dtype)
    weights = (rho * (1 - rho) ** powers)[:, None]
    keep = (1 - rho) ** count
    mean = keep * m + (weights * means).sum(dim=0)
    square = keep * (v + m * m) + (weights * squares).sum(dim=0)
    var = (square - mean * mean).clamp(min=0)
    sizes = [stats[i][0].numel() for i in layers]
    folded = dict(zip(layers, zip(mean.split(sizes), var.split(sizes), strict=True),
                      strict=True))
    return tuple(folded.get(i, pair) for i, pair in enumerate(stats))


def frame_moments(inputs: dict[int, torch.Tensor]) -> Sink:
    """Each layer's per-frame, per-channel ``(mean, mean of squares)`` of its input
    ``[B, C, H, W]``: ``[B, C]`` each."""
    return {i: (x.mean(dim=(2, 3)), (x * x).mean(dim=(2, 3))) for i, x in inputs.items()}


def frames_fold(store: ParamStore, inputs: dict[int, torch.Tensor], rho: float
                ) -> Callable[[], None]:
    """The work that folds one observed forward pass's frames into ``store``'s estimate,
    computing their moments from the BatchNorm ``inputs`` (a ``frame_sink``) when it runs; see
    :func:`fold_frames_later`. The inputs must not be changed in place meanwhile (timm's CNNs
    never do; checked)."""
    versions = {i: x._version for i, x in inputs.items()}

    def fold() -> None:
        if any(x._version != versions[i] for i, x in inputs.items()):
            raise RuntimeError("a BatchNorm input was changed in place after the forward pass; "
                               "its frames cannot be folded into the running statistics")
        sink = frame_moments(inputs)
        store.update_stats(lambda stats: fold_frames(stats, sink, rho))

    return fold


def fold_frames_later(store: ParamStore, inputs: dict[int, torch.Tensor], rho: float) -> None:
    """Fold one observed forward pass's frames into ``store``'s estimate at its next
    :meth:`~ParamStore.settle`, which computes their moments from the BatchNorm ``inputs``
    (a ``frame_sink``) then.

    A frame's own prediction never uses its moments, only the frames after it do, and every
    forward pass that reads the estimate settles first; so the result is the same as folding
    at once, while the caller can publish the prediction before paying for the moments (a full
    pass over every BatchNorm input, ~100 reductions)."""
    store.defer(frames_fold(store, inputs, rho))


def check_momenta(momentum: float, frame_momentum: float, prior: float = 0.0) -> None:
    """Refuse momenta (and the source prior) outside ``[0, 1]`` with the offending name."""
    for name, value in (("stats_momentum", momentum), ("frame_momentum", frame_momentum),
                        ("stats_prior", prior)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], not {value}")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"bn_stats must be one of {MODES}, not {mode!r}")
    return mode


@dataclass(frozen=True)
class StatsConfig:
    """The BatchNorm-statistics settings every baseline's config inherits."""

    bn_stats: str = BATCH           # statistics predict() normalises with (MODES)
    stats_momentum: float = 0.1     # ρ per adapted batch (the *batches* rule)
    frame_momentum: float = 0.0     # ρ_f per classified frame (the *frames* rule when > 0)
    stats_prior: float = 0.0        # share of the source statistics in running normalisation


class BatchNormStats:
    """Per-forward choice of BatchNorm statistics plus a running estimate of the test ones."""

    @classmethod
    def from_config(cls, model: nn.Module, cfg: StatsConfig) -> BatchNormStats:
        return cls(model, cfg.stats_momentum, cfg.frame_momentum, cfg.stats_prior)

    def __init__(self, model: nn.Module, momentum: float = 0.1,
                 frame_momentum: float = 0.0, prior: float = 0.0) -> None:
        check_momenta(momentum, frame_momentum, prior)
        self.momentum = float(momentum)
        self.frame_momentum = float(frame_momentum)
        self.store = ParamStore(RUNNING, prior)   # plain model(x) calls use the running estimate
        fusion = fuse_norms(model, [], self.store)
        self.names = fusion.bn_names
        device = next(model.parameters()).device
        self._initial = ParamSet(
            origin=torch.zeros(0, device=device), eps=torch.zeros(0, device=device),
            alpha=torch.zeros(1, device=device), bank=torch.zeros(1, 0, device=device),
            alpha_scale=1.0,
            bn_stats=tuple((m.to(device), v.to(device)) for m, v in fusion.bn_stats))
        self.store.publish(self._initial)
        self._local = threading.local()

    @property
    def active(self) -> bool:
        """Whether the model has any BatchNorm."""
        return bool(self.names)

    @property
    def estimate(self) -> BnStats:
        """The published running estimate, one ``(mean, var)`` per BatchNorm, the last
        observed frames folded in."""
        self.store.settle()
        return self.store.published.bn_stats

    @contextmanager
    def using(self, mode: str, collect: bool = False) -> Iterator[ForwardContext]:
        """Forward passes of this thread inside the block use ``mode``'s statistics; with
        ``collect`` (and ``mode == "batch"``) each layer's batch ``(mean, var)`` lands in
        ``ctx.bn_sink``; ``running`` forwards inside :meth:`observing` also fold their frames
        into the estimate when ``frame_momentum`` is set (after the block, if it did not
        raise)."""
        if mode == RUNNING:
            self.store.settle()
        params = self._initial if mode == SOURCE else self.store.published
        frames = mode == RUNNING and self.frame_momentum > 0 and self._observing
        with self.store.using(params, mode, collect and mode == BATCH, frames) as ctx:
            yield ctx
        if ctx.frame_sink:
            fold_frames_later(self.store, ctx.frame_sink, self.frame_momentum)

    def settle(self) -> None:
        """Fold the frames of the last observed prediction now (see :func:`fold_frames_later`;
        the next prediction would do it first)."""
        self.store.settle()

    @property
    def _observing(self) -> bool:
        return getattr(self._local, "observing", False)

    @contextmanager
    def observing(self) -> Iterator[None]:
        """``running`` forwards of this thread inside the block fold their frames into the
        estimate (the frames rule); outside it predictions change nothing."""
        previous = self._observing
        self._local.observing = True
        try:
            yield
        finally:
            self._local.observing = previous

    def update(self, sink: Sink | None) -> None:
        """Fold one adapted batch's collected statistics into the running estimate (the
        *batches* rule; a no-op when the estimate follows the frames)."""
        if not sink or self.frame_momentum > 0:
            return
        rho = self.momentum
        self.store.update_stats(lambda stats: fold_batch(stats, sink, rho))

    def reset(self) -> None:
        self.store.settle()
        self.store.publish(self._initial)

    @property
    def nbytes(self) -> int:
        """Memory of the running estimate."""
        return sum(4 * (m.numel() + v.numel()) for m, v in self._initial.bn_stats)
