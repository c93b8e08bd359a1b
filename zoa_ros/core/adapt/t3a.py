"""T3A: back-propagation-free classifier adjustment with per-class support sets (METHOD.md §7).

The model is split into the feature extractor (pre-logits ``z``) and the linear head. Supports
start as the head's weight rows, each labelled by ``argmax head(row)`` and scored by the entropy
of ``head(row)``. Per adapted batch: features ``z``, pseudo-labels ``argmax head(z)`` and
entropies are appended to the supports, then every class keeps only its ``filter_k`` lowest-
entropy supports (ties: older first). Logits::

    z · normalize_cols( normalize_rows(supports)ᵀ · onehot(labels) )

(unnormalised feature times unit-norm class prototypes; no bias). As in T3A, the batch's own
logits in :meth:`T3A.forward_and_adapt` come from the supports *after* adding that batch. Supports
persist over the whole stream (continual); nothing in the model changes. One forward per batch;
:meth:`T3A.adapt` reuses the features recorded by :meth:`T3A.predict_with_record` when they match
(0 forwards). BatchNorm models use test-batch statistics by default (the reference does), see
:mod:`.bn_stats` for ``bn_stats``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.adapt.bn_stats import (
    SOURCE,
    STREAMING_REASON,
    STREAMING_STATS,
    BatchNormStats,
    StatsConfig,
    check_mode,
)
from zoa_ros.core.adapt.common import CostCounter, config_from_dict, entropy_per_sample
from zoa_ros.core.adapt.params import BATCH, RUNNING
from zoa_ros.core.model.pack import ModelPack


@dataclass(frozen=True)
class T3AConfig(StatsConfig):
    filter_k: int = 20              # supports kept per class (-1: keep all)

    def validate(self) -> None:
        check_mode(self.bn_stats)
        if self.filter_k == 0 or self.filter_k < -1:
            raise ValueError("t3a: filter_k must be >= 1, or -1 for no filtering")


class Supports(NamedTuple):
    """One immutable support set: features (N x D), labels (N), entropies (N), and the
    class prototypes derived from them (D x C)."""

    features: torch.Tensor
    labels: torch.Tensor
    entropy: torch.Tensor
    prototypes: torch.Tensor


class T3ARecord(NamedTuple):
    """Features and head logits of one :meth:`T3A.predict_with_record` call."""

    features: torch.Tensor
    head_logits: torch.Tensor
    norm: str


def prototypes(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    onehot = F.one_hot(labels, classes).to(features.dtype)
    return F.normalize(F.normalize(features, dim=1).T @ onehot, dim=0)


def filter_supports(labels: torch.Tensor, entropy: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` lowest-entropy supports of every class."""
    if k < 0:
        return torch.arange(labels.numel(), device=labels.device)
    order = torch.sort(entropy, stable=True).indices
    order = order[torch.sort(labels[order], stable=True).indices]
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(order.numel(), device=order.device) - first
    return torch.sort(order[rank < k]).values


class T3A(AdaptMethod):
    """T3A over the quantized model's features; see the module docstring."""

    name: ClassVar[str] = "t3a"
    streaming_defaults: ClassVar[dict] = STREAMING_STATS

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        super().__init__(model, pack, config, generator)
        self.cfg = config_from_dict(T3AConfig, config, self.name)
        model.eval()
        self.device = next(model.parameters()).device
        self.stats = BatchNormStats.from_config(model, self.cfg)
        self.head = model.get_classifier()
        self._count = CostCounter(self.costs)
        self._lock = threading.Lock()
        if self.stats.active:
            self._adapt_norm = SOURCE if self.cfg.bn_stats == SOURCE else BATCH
            self._predict_norm = self.cfg.bn_stats
        else:
            self._adapt_norm = self._predict_norm = SOURCE
        if self._predict_norm == BATCH:
            self.supports_streaming = False
            self.streaming_reason = STREAMING_REASON
        with torch.no_grad():
            warm = self.head.weight.detach().float().clone()
            logits = self.head(warm)
        self.classes = logits.shape[1]
        labels = logits.argmax(dim=1)
        self._initial = Supports(warm, labels, entropy_per_sample(logits),
                                 prototypes(warm, labels, self.classes))
        self.supports = self._initial

    # ---- forward ---------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, norm: str, collect: bool = False) -> tuple[
            torch.Tensor, torch.Tensor, dict | None]:
        with torch.no_grad(), self.stats.using(norm, collect) as ctx:
            z = self.model.forward_head(self.model.forward_features(x.to(self.device)),
                                        pre_logits=True)
            head_logits = self.head(z)
        self._count(forward_passes=1)
        return z.float(), head_logits, ctx.bn_sink

    def logits(self, z: torch.Tensor, supports: Supports | None = None) -> torch.Tensor:
        """T3A's output for features ``z`` with ``supports`` (default: the current ones)."""
        supports = self.supports if supports is None else supports
        return z @ supports.prototypes

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)[0]

    def predict_with_record(self, x: torch.Tensor) -> tuple[torch.Tensor, T3ARecord]:
        with self.stats.observing():
            return self._predict(x)

    def settle(self) -> None:
        self.stats.settle()

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, T3ARecord]:
        z, head_logits, _ = self._features(x, self._predict_norm)
        self._count(frames_predicted=x.shape[0])
        return self.logits(z), T3ARecord(z, head_logits, self._predict_norm)

    # ---- adaptation ------------------------------------------------------------------------
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            z, head_logits, sink = self._features(x, self._adapt_norm,
                                                  collect=self._predict_norm == RUNNING)
            self._count(frames_predicted=x.shape[0])
            supports = self._add(z, head_logits, sink)
        return self.logits(z, supports)

    def adapt(self, x: torch.Tensor, cached: T3ARecord | Sequence[T3ARecord] | None = None
              ) -> dict:
        """Add ``x`` to the supports: 1 forward, or 0 when ``cached`` holds the features of
        exactly these frames computed with the adaptation normalisation."""
        with self._lock:
            record = self._reusable(cached, x.shape[0])
            if record is not None:
                self._add(record.features, record.head_logits, None)
                return {"forwards": 0, "reused_forward": True}
            z, head_logits, sink = self._features(x, self._adapt_norm,
                                                  collect=self._predict_norm == RUNNING)
            self._add(z, head_logits, sink)
            return {"forwards": 1, "reused_forward": False}

    def _reusable(self, cached: T3ARecord | Sequence[T3ARecord] | None,
                  batch: int) -> T3ARecord | None:
        if cached is None:
            return None
        records = [cached] if isinstance(cached, T3ARecord) else list(cached)
        if (not records or not all(isinstance(r, T3ARecord) for r in records)
                or any(r.norm != self._adapt_norm for r in records)
                or (self._adapt_norm == BATCH and len(records) != 1)):
            return None
        z = torch.cat([r.features for r in records])
        if z.shape[0] != batch:
            return None
        return T3ARecord(z, torch.cat([r.head_logits for r in records]), self._adapt_norm)

    def _add(self, z: torch.Tensor, head_logits: torch.Tensor, sink: dict | None) -> Supports:
        old = self.supports
        features = torch.cat([old.features, z])
        labels = torch.cat([old.labels, head_logits.argmax(dim=1)])
        ent = torch.cat([old.entropy, entropy_per_sample(head_logits).float()])
        keep = filter_supports(labels, ent, self.cfg.filter_k)
        features, labels = features[keep], labels[keep]
        new = Supports(features, labels, ent[keep], prototypes(features, labels, self.classes))
        self.supports = new                      # one reference swap: predict sees old or new
        self.stats.update(sink)
        self._count(adapt_steps=1, frames_adapted=z.shape[0])
        return new

    def reset(self) -> None:
        with self._lock:
            self.supports = self._initial
            self.stats.reset()

    def bank_summary(self) -> dict:
        s = self.supports
        return {"entries": int(s.labels.numel()),
                "bytes": 4 * (s.features.numel() + s.entropy.numel() + s.prototypes.numel())
                + 8 * s.labels.numel(),
                "filter_k": self.cfg.filter_k}
