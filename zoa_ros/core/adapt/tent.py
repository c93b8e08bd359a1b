"""TENT: entropy minimisation by back-propagation on the normalisation affines (METHOD.md §7).

One SGD step per adapted batch on the mean prediction entropy, over *all* norm affine
parameters: every LayerNorm's ``weight``/``bias`` (ViT; default lr 1e-3, momentum 0.9 - FOA's
setting) or every BatchNorm's, normalising with the batch's statistics (CNN; lr 2.5e-4, momentum
0.9 - TENT's ImageNet setting, UNVERIFIED in the reference repos). The prediction is the output
of the same, pre-update forward. Cost per batch: 1 forward + 1 backward, plus the autograd graph
(measured every step: :attr:`Tent.graph_bytes`, bytes of the distinct tensors autograd saved,
parameters and buffers excluded; :attr:`Tent.peak_graph_bytes` the maximum so far).

On a fake-quantized model this is a **straight-through-estimator variant, not the paper's
setting** (the paper runs TENT on FP32 only): the activation fake-quantizers
(``torch.fake_quantize_per_tensor_affine``) pass gradients unchanged inside their clipping range
and block them outside; :attr:`note` says so.

Threads: parameters are updated in place, so :meth:`Tent.predict` waits for a running step
(one lock) instead of reading half-updated affines.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

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

STE_NOTE = ("TENT back-propagates through fake quantization with a straight-through estimator "
            "(gradient 1 inside each quantizer's range, 0 outside): a non-paper variant; the "
            "paper's TENT is an FP32-only reference")
DEFAULT_LR = {"layernorm": 1e-3, "batchnorm": 2.5e-4}


@dataclass(frozen=True)
class TentConfig(StatsConfig):
    lr: float | None = None         # None: 1e-3 for LayerNorm models, 2.5e-4 for BatchNorm ones
    momentum: float = 0.9
    weight_decay: float = 0.0
    min_adapt_batch: int = 16       # smaller batches are predicted, not adapted on

    def validate(self) -> None:
        if check_mode(self.bn_stats) == SOURCE:
            raise ValueError("tent: bn_stats must be 'batch' or 'running'")
        if self.lr is not None and self.lr <= 0:
            raise ValueError("tent: lr must be > 0")


def norm_affine_parameters(model: nn.Module) -> tuple[str, list[tuple[str, nn.Parameter]]]:
    """The model family and every norm layer's affine parameters (BatchNorm if any, else
    LayerNorm), in network order."""
    bn = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    family, modules = ("batchnorm", bn) if bn else (
        "layernorm", [m for m in model.modules() if isinstance(m, nn.LayerNorm)])
    names = {id(m): n for n, m in model.named_modules()}
    params = [(f"{names[id(m)]}.{k}", p) for m in modules
              for k, p in (("weight", m.weight), ("bias", m.bias)) if p is not None]
    if not params:
        raise ValueError("tent: the model has no norm affine parameters")
    return family, params


class SavedTensorMeter:
    """Bytes of the distinct storages autograd saves for backward inside the block, except the
    model's own parameters and buffers (which exist anyway)."""

    def __init__(self, model: nn.Module) -> None:
        self._exclude = {t.untyped_storage().data_ptr()
                         for t in [*model.parameters(), *model.buffers()] if t.numel()}
        self._seen: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = storage.data_ptr()
        if ptr not in self._exclude:
            self._seen[ptr] = storage.nbytes()
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        self._seen = {}
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def total(self) -> int:
        return sum(self._seen.values())


class Tent(AdaptMethod):
    """TENT on the norm affines; see the module docstring."""

    name: ClassVar[str] = "tent"
    adapt_may_pause: ClassVar[bool] = False   # predict() takes the lock a step holds
    streaming_defaults: ClassVar[dict] = STREAMING_STATS

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        super().__init__(model, pack, config, generator)
        self.cfg = config_from_dict(TentConfig, config, self.name)
        model.eval()
        self.device = next(model.parameters()).device
        self.stats = BatchNormStats.from_config(model, self.cfg)
        self.family, named = norm_affine_parameters(model)
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        model.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self._source = [p.detach().clone() for p in self.params]
        self.lr = self.cfg.lr if self.cfg.lr is not None else DEFAULT_LR[self.family]
        self.optimizer = self._new_optimizer()
        self._predict_norm = self.cfg.bn_stats if self.stats.active else SOURCE
        self._adapt_norm = BATCH if self.stats.active else SOURCE
        if self._predict_norm == BATCH:
            self.supports_streaming = False
            self.streaming_reason = STREAMING_REASON
        self.note = STE_NOTE if pack.quant.enabled else None
        self.meter = SavedTensorMeter(model)
        self.peak_graph_bytes = 0
        self.last_loss: float | None = None
        self._count = CostCounter(self.costs)
        self._lock = threading.Lock()

    def _new_optimizer(self) -> torch.optim.SGD:
        return torch.optim.SGD(self.params, lr=self.lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def observing(self) -> AbstractContextManager:
        return self.stats.observing()

    def settle(self) -> None:
        self.stats.settle()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.no_grad(), self.stats.using(self._predict_norm):
            logits = self.model(x.to(self.device))
        self._count(forward_passes=1, frames_predicted=x.shape[0])
        return logits

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-update logits of ``x``, then one SGD step on their mean entropy."""
        if x.shape[0] < self.cfg.min_adapt_batch:
            return self.predict(x)
        with self._lock:
            logits = self._step(x)
        self._count(frames_predicted=x.shape[0])
        return logits

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> None:
        """One step on already-predicted frames (forward + backward; records are not reusable:
        the step needs the autograd graph)."""
        if x.shape[0] < self.cfg.min_adapt_batch:
            return None
        with self._lock:
            self._step(x)
        return None

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        collect = self._predict_norm == RUNNING
        with (torch.enable_grad(), self.meter.hooks(),
              self.stats.using(self._adapt_norm, collect) as ctx):
            logits = self.model(x.to(self.device))
            loss = entropy_per_sample(logits).mean()
        self.graph_bytes = self.meter.total
        self.peak_graph_bytes = max(self.peak_graph_bytes, self.graph_bytes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.stats.update(ctx.bn_sink)
        self.last_loss = float(loss.detach())
        self._count(forward_passes=1, backward_passes=1, adapt_steps=1,
                    frames_adapted=x.shape[0])
        return logits.detach()

    def loss_of(self, x: torch.Tensor) -> float:
        """Diagnostic: TENT's objective (mean entropy) on ``x`` with the current parameters and
        the adaptation normalisation (one forward)."""
        with self._lock, torch.no_grad(), self.stats.using(self._adapt_norm):
            logits = self.model(x.to(self.device))
        self._count(forward_passes=1)
        return float(entropy_per_sample(logits).mean())

    def reset(self) -> None:
        with self._lock, torch.no_grad():
            for p, p0 in zip(self.params, self._source, strict=True):
                p.copy_(p0)
            self.optimizer = self._new_optimizer()
            self.stats.reset()
            self.last_loss = None

    def bank_summary(self) -> dict:
        n = self.trainable_parameters
        return {"entries": 0, "bytes": 0, "trainable_params": n,
                "optimizer_bytes": 4 * n if self.cfg.momentum else 0,
                "graph_bytes": self.graph_bytes, "peak_graph_bytes": self.peak_graph_bytes}
