"""BatchNorm test statistics for the baselines (BN-stat adaptation, T3A, TENT, FOA on CNNs).

Every ``BatchNorm2d`` of the model is replaced by ZOA's fused BatchNorm with no adapted affine
(:func:`~zoa_ros.core.adapt.fused_norm.fuse_norms` with an empty layer list), so parameters,
buffers and state-dict keys stay those of the source model, gradients still reach the module's
own ``weight``/``bias``, and each forward pass chooses its statistics *per thread*:

* ``batch``   - the statistics of the current batch (the papers' protocol; running buffers are
  neither used nor updated);
* ``running`` - a running estimate of the test statistics, initialised from the source running
  buffers and moved towards each adapted batch's mean and unbiased variance,
  ``m ← (1 − ρ)·m + ρ·m_B`` (ρ = ``momentum``); what single frames are classified with;
* ``source``  - the source running buffers, frozen (eval mode).

The estimate is an immutable tuple published by one reference swap, so a prediction in another
thread sees the old or the new estimate, never a mix. LayerNorm models have no BatchNorm: the
helper then does nothing (``active`` is False).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from zoa_ros.core.adapt.fused_norm import fuse_norms
from zoa_ros.core.adapt.params import BATCH, RUNNING, ForwardContext, ParamSet, ParamStore

SOURCE = "source"
MODES = (BATCH, RUNNING, SOURCE)

STREAMING_REASON = ("BatchNorm normalises with the statistics of the predicted batch "
                    "(bn_stats: batch); single frames need bn_stats: running")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"bn_stats must be one of {MODES}, not {mode!r}")
    return mode


class BatchNormStats:
    """Per-forward choice of BatchNorm statistics plus a running estimate of the test ones."""

    def __init__(self, model: nn.Module, momentum: float = 0.1) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"stats momentum must be in [0, 1], not {momentum}")
        self.momentum = float(momentum)
        self.store = ParamStore(RUNNING)   # a plain model(x) call uses the running estimate
        fusion = fuse_norms(model, [], self.store)
        self.names = fusion.bn_names
        device = next(model.parameters()).device
        self._initial = ParamSet(
            origin=torch.zeros(0, device=device), eps=torch.zeros(0, device=device),
            alpha=torch.zeros(1, device=device), bank=torch.zeros(1, 0, device=device),
            alpha_scale=1.0,
            bn_stats=tuple((m.to(device), v.to(device)) for m, v in fusion.bn_stats))
        self.store.publish(self._initial)

    @property
    def active(self) -> bool:
        """Whether the model has any BatchNorm."""
        return bool(self.names)

    @property
    def estimate(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The published running estimate, one ``(mean, var)`` per BatchNorm."""
        return self.store.published.bn_stats

    @contextmanager
    def using(self, mode: str, collect: bool = False) -> Iterator[ForwardContext]:
        """Forward passes of this thread inside the block use ``mode``'s statistics; with
        ``collect`` (and ``mode == "batch"``) each layer's batch ``(mean, var)`` lands in
        ``ctx.bn_sink``."""
        norm = RUNNING if mode == SOURCE else mode
        params = self._initial if mode == SOURCE else self.store.published
        with self.store.using(params, norm, collect and mode == BATCH) as ctx:
            yield ctx

    def update(self, sink: dict[int, tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Fold one adapted batch's collected statistics into the running estimate."""
        if not sink:
            return
        rho = self.momentum
        params = self.store.published
        stats = tuple(((1 - rho) * m + rho * sink[i][0], (1 - rho) * v + rho * sink[i][1])
                      if i in sink else (m, v) for i, (m, v) in enumerate(params.bn_stats))
        self.store.publish(params.replace(bn_stats=stats, version=params.version + 1))

    def reset(self) -> None:
        self.store.publish(self._initial)

    @property
    def nbytes(self) -> int:
        """Memory of the running estimate."""
        return sum(4 * (m.numel() + v.numel()) for m, v in self._initial.bn_stats)
