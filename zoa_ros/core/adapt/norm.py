"""BN-stat adaptation (``bn_adapt`` in the reference, METHOD.md §7): BatchNorm normalises with test
statistics, nothing is learned, no parameter changes.

* :meth:`NormAdapt.forward_and_adapt` (paper protocol): one forward in which every BatchNorm
  uses the batch's own mean/var (affine frozen).
* :meth:`NormAdapt.predict`: ``bn_stats: batch`` (default) normalises with the predicted batch's
  statistics, so single frames are not supported (``supports_streaming`` False); ``bn_stats:
  running`` uses a running estimate of the test statistics, initialised from the source buffers
  (deployment extension, not in the paper; see :mod:`.bn_stats`): with ``frame_momentum`` (the
  streaming default) every classified frame updates it inside its own forward pass and
  :meth:`NormAdapt.adapt` has nothing to do; otherwise every adapted batch updates it
  (``stats_momentum``) and :meth:`NormAdapt.adapt` costs one forward.
* LayerNorm models have no statistics to adapt: the method behaves exactly as ``none`` and says so
  in :attr:`note`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.adapt.bn_stats import (
    STREAMING_REASON,
    STREAMING_STATS,
    BatchNormStats,
    StatsConfig,
    check_mode,
)
from zoa_ros.core.adapt.common import CostCounter, config_from_dict
from zoa_ros.core.adapt.params import BATCH, RUNNING
from zoa_ros.core.model.pack import ModelPack

LAYERNORM_NOTE = "LayerNorm model: no normalisation statistics to adapt; identical to 'none'"


@dataclass(frozen=True)
class NormConfig(StatsConfig):
    min_adapt_batch: int = 16       # smaller batches do not update the running estimate

    def validate(self) -> None:
        if check_mode(self.bn_stats) not in (BATCH, RUNNING):
            raise ValueError("norm: bn_stats must be 'batch' or 'running'")


class NormAdapt(AdaptMethod):
    """Test-batch BatchNorm statistics; see the module docstring."""

    name: ClassVar[str] = "norm"
    streaming_defaults: ClassVar[dict] = STREAMING_STATS

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        super().__init__(model, pack, config, generator)
        self.cfg = config_from_dict(NormConfig, config, self.name)
        model.eval()
        self.device = next(model.parameters()).device
        self.stats = BatchNormStats.from_config(model, self.cfg)
        self._count = CostCounter(self.costs)
        self._running = self.stats.active and self.cfg.bn_stats == RUNNING
        if not self.stats.active:
            self.note = LAYERNORM_NOTE
        elif self.cfg.bn_stats == BATCH:
            self.supports_streaming = False
            self.streaming_reason = STREAMING_REASON

    def _forward(self, x: torch.Tensor, mode: str, collect: bool = False) -> tuple[
            torch.Tensor, dict | None]:
        with torch.no_grad(), self.stats.using(mode, collect) as ctx:
            logits = self.model(x.to(self.device))
        self._count(forward_passes=1)
        return logits, ctx.bn_sink

    @property
    def follows_frames(self) -> bool:
        return self._running and self.cfg.frame_momentum > 0

    def observing(self) -> AbstractContextManager:
        return self.stats.observing()

    def settle(self) -> None:
        self.stats.settle()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self._forward(x, self.cfg.bn_stats)
        self._count(frames_predicted=x.shape[0])
        return logits

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """One forward with the batch's statistics (the prediction); in ``running`` mode the
        batch's statistics also update the running estimate."""
        logits, sink = self._forward(x, BATCH, collect=self._running)
        self._count(frames_predicted=x.shape[0])
        self._update(sink, x.shape[0])
        return logits

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> None:
        """``running`` mode with the *batches* rule: one forward to measure ``x``'s statistics;
        otherwise nothing to learn (no forward, no cost)."""
        if not self._running or self.cfg.frame_momentum > 0 \
                or x.shape[0] < self.cfg.min_adapt_batch:
            return None
        _, sink = self._forward(x, BATCH, collect=True)
        self._update(sink, x.shape[0])
        return None

    def _update(self, sink: dict | None, batch: int) -> None:
        if self._running and batch >= self.cfg.min_adapt_batch:
            self.stats.update(sink)
            self._count(adapt_steps=1, frames_adapted=batch)

    def reset(self) -> None:
        self.stats.reset()

    def bank_summary(self) -> dict:
        summary = {"entries": 0, "bytes": self.stats.nbytes if self._running else 0,
                   "batchnorms": len(self.stats.names), "bn_stats": self.cfg.bn_stats}
        if self.note:
            summary["note"] = self.note
        return summary
