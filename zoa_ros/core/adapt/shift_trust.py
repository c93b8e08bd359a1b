"""Shift-scaled trust in test statistics (docs/METHOD.md §10): what a BatchNorm normalises a
single frame with, per layer, instead of a fixed share of the source statistics.

A running estimate of a layer's test statistics differs from the source statistics for two
reasons: the domain shifted, and the frames behind it are few and related (a camera sees a few
scenes at a time). Only the first is worth correcting. Per layer ``l``:

* the estimate since its last restart from the source statistics, debiased: the frames rule
  (:mod:`.bn_stats`) is an exponential average started at the source statistics, so after
  ``n`` frames it holds a share ``a = (1 − ρ)^n`` of them; removing it leaves the frames'
  own average (:func:`debiased`);
* its divergence from the source statistics ``S_l`` (channel mean of
  :func:`~zoa_ros.core.model.shift_reference.layer_divergence`);
* the divergence ``N_l`` that clean, related images alone give an estimate over as many
  distinct images (the pack's calibrated layer noise; ``images`` = the effective number of
  frames behind the estimate / the frames per view);
* the source share ``w_l = clamp(N_l / S_l, floor, 1)``: 1 while the estimate is within what
  clean content explains, falling towards ``floor`` as the shift grows beyond it - the
  positive-part shrinkage of an estimate towards a prior (James-Stein), one weight per layer;
* normalise with the mixture :func:`~.fused_norm.blend_source` of the source statistics and
  the debiased estimate at ``w_l``.

Deep layers see inputs that the adapted layers before them have already brought back towards
the source, so their ``S_l`` shrinks and they keep more of the source statistics. Computed every
few frames, not per frame: the per-layer ``(mean, var)`` a prediction uses change only then.
"""

from __future__ import annotations

import math

import torch

from zoa_ros.core.adapt.fused_norm import blend_source
from zoa_ros.core.adapt.params import BnStats
from zoa_ros.core.model.shift_reference import ShiftReference, layer_divergence


def source_share(frames: float, rho: float) -> float:
    """``(1 − ρ)^n``: the source statistics' share of an estimate started at them ``n`` frames
    ago (``n`` infinite: a converged estimate, e.g. a recalled one)."""
    return 0.0 if math.isinf(frames) else (1.0 - rho) ** frames


def effective_frames(frames: float, rho: float) -> float:
    """Kish's effective sample size of the exponential weights of ``n`` frames:
    ``(Σw)² / Σw²`` = ``(1 − a)(2 − ρ) / (ρ(1 + a))``; ``n`` for few frames, ``(2 − ρ)/ρ``
    for many."""
    a = source_share(frames, rho)
    return (1 - a) * (2 - rho) / (rho * (1 + a))


def debiased(stats: BnStats, source: BnStats, share: float) -> BnStats:
    """The frames' own average: ``stats`` without the ``share`` of ``source`` it started from
    (in mean and mean of squares)."""
    if share <= 0:
        return tuple(stats)
    out = []
    for (mean, var), (s_mean, s_var) in zip(stats, source, strict=True):
        m = (mean - share * s_mean) / (1 - share)
        square = (var + mean * mean - share * (s_var + s_mean * s_mean)) / (1 - share)
        out.append((m, (square - m * m).clamp(min=0)))
    return tuple(out)


def trusted_norm(stats: BnStats, source: BnStats, reference: ShiftReference, frames: float,
                 rho: float, dwell: int, floor: float, debias: bool = True
                 ) -> tuple[BnStats, list[float]]:
    """Per BatchNorm layer, the ``(mean, var)`` to normalise with and the source share used
    (see the module docstring). ``frames``: frames folded into ``stats`` since it restarted
    from ``source`` (infinite: converged)."""
    share = source_share(frames, rho)
    if share >= 1.0:
        return tuple(source), [1.0] * len(source)
    noise = reference.noise(effective_frames(frames, rho) / dwell)
    test = debiased(stats, source, share) if debias else stats
    out, weights = [], []
    for i, ((mean, var), (s_mean, s_var)) in enumerate(zip(test, source, strict=True)):
        shift = float(layer_divergence(mean, var, s_mean, s_var).mean())
        w = 1.0 if shift <= 0 else min(1.0, max(floor, float(noise[i]) / shift))
        weights.append(w)
        out.append((s_mean, s_var) if w >= 1.0 else blend_source(mean, var, s_mean, s_var, w))
    return tuple(out), weights


def mean_share(weights: list[float]) -> float:
    return float(torch.tensor(weights).mean()) if weights else 1.0
