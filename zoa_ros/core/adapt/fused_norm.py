"""Fused normalization layers: the affine comes from the published ZOA parameter set.

Effective affine of an adapted layer (METHOD.md §4.1)::

    γ = γ0 + Σ_k softmax(S·α)_k Δγ_k + εγ        β = β0 + Σ_k softmax(S·α)_k Δβ_k + εβ

With an empty bank and ε = 0 the effective affine *is* the origin (``x + 0.0 == x``), and the
layers call the same functional op with the same arguments as the module they replace, so the
output is bitwise identical.

BatchNorm models: every ``BatchNorm2d`` (including timm's ``BatchNormAct2d``, whose ``drop``
and ``act`` are kept) is replaced, adapted or not, because ZOA's CNN variant normalises with
test statistics in all of them. Each forward reads its normalisation from the thread's
:class:`~zoa_ros.core.adapt.params.ForwardContext`: ``batch`` (current batch mean/var, the
paper's protocol), ``running`` (the parameter set's running estimate of the test statistics,
initialised from the source running buffers, blended with them by :func:`blend_source`, for
single-frame streaming inference; the context's ``frame_sink``, when set, receives each
layer's input so the caller can fold the frames' moments into that estimate, see
:func:`~zoa_ros.core.adapt.bn_stats.fold_frames_later`) or ``source`` (the source running
buffers, exactly as the unadapted model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoa_ros.core.adapt.params import (
    BATCH,
    SOURCE,
    ForwardContext,
    NormSlot,
    ParamLayout,
    ParamSet,
    ParamStore,
)
from zoa_ros.core.runtime.prediction_first import yield_point


class FusedLayerNorm(nn.LayerNorm):
    """Replaces an adapted ``nn.LayerNorm``; keeps its frozen ``weight``/``bias``.

    Subclasses ``nn.LayerNorm`` (without its ``__init__``) so that code testing
    ``isinstance(m, nn.LayerNorm)`` (e.g. ``model_family``) still recognises the layer.
    """

    def __init__(self, norm: nn.LayerNorm, slot: NormSlot, store: ParamStore) -> None:
        nn.Module.__init__(self)
        self.normalized_shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        self.elementwise_affine = True
        self.weight = norm.weight
        self.bias = norm.bias
        self.slot = slot
        self.store = store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        yield_point()
        weight, bias = self.store.context().params.affine(self.slot)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, slot={self.slot.name!r}"


class FusedBatchNorm(nn.BatchNorm2d):
    """Replaces a ``BatchNorm2d`` / ``BatchNormAct2d``; adapted when ``slot`` is set.

    Keeps the original parameters and running buffers (so the state-dict keys do not change)
    and the ``drop``/``act`` of ``BatchNormAct2d``. Subclasses ``nn.BatchNorm2d`` (without its
    ``__init__``) so ``isinstance`` checks still see a BatchNorm; its ``training`` and
    ``track_running_stats`` flags are ignored - the forward context decides the statistics and
    the running buffers are never updated.
    """

    def __init__(self, norm: nn.BatchNorm2d, slot: NormSlot | None, index: int,
                 store: ParamStore) -> None:
        nn.Module.__init__(self)
        self.num_features = norm.num_features
        self.eps = norm.eps
        self.momentum = norm.momentum
        self.affine = norm.affine
        self.track_running_stats = norm.track_running_stats
        self.weight = norm.weight
        self.bias = norm.bias
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        self.register_buffer("num_batches_tracked", norm.num_batches_tracked)
        drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)
        self.drop = drop if isinstance(drop, nn.Module) else nn.Identity()
        self.act = act if isinstance(act, nn.Module) else nn.Identity()
        self.slot = slot
        self.index = index
        self.store = store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        yield_point()
        ctx = self.store.context()
        if self.slot is None:
            weight, bias = self.weight, self.bias
        else:
            weight, bias = ctx.params.affine(self.slot)
        if ctx.norm == BATCH:
            if ctx.bn_sink is None:
                x = F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
            else:
                x, ctx.bn_sink[self.index] = _batch_norm_with_stats(x, weight, bias, self.eps)
        else:
            if ctx.frame_sink is not None:
                ctx.frame_sink[self.index] = x.detach()
            mean, var = self._running_stats(ctx)
            x = F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        return self.act(self.drop(x))

    def _running_stats(self, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(mean, var)`` a ``running`` or ``source`` forward normalises with."""
        layers = self.store.stats_layers
        if ctx.norm == SOURCE or (layers is not None and self.index >= layers):
            return self.running_mean, self.running_var
        if ctx.params.bn_norm is not None:
            return ctx.params.bn_norm[self.index]
        return blend_source(*ctx.params.bn_stats[self.index], self.running_mean,
                            self.running_var, self.store.stats_prior)

    def prediction_norm(self, pinned: tuple[ParamSet, str] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, var, weight, bias)`` a prediction normalises single frames with - on this
        thread, or with ``pinned`` (parameter set, normalisation; e.g. the source model while
        ZOA's shift gate is closed) - for runtimes that fold them into their own weights.
        ``ValueError`` when predictions use batch statistics."""
        ctx = ForwardContext(*pinned) if pinned is not None else self.store.context()
        if ctx.norm == BATCH:
            raise ValueError("predictions normalise with the statistics of each batch "
                             "(bn_stats: batch); there is no single normalization to fold")
        weight, bias = (self.weight, self.bias) if self.slot is None else \
            ctx.params.affine(self.slot)
        return (*self._running_stats(ctx), weight, bias)

    def extra_repr(self) -> str:
        adapted = "frozen" if self.slot is None else f"slot={self.slot.name!r}"
        return f"{self.num_features}, eps={self.eps}, {adapted}"


def blend_source(mean: torch.Tensor, var: torch.Tensor, source_mean: torch.Tensor,
                 source_var: torch.Tensor, prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics a ``running`` BatchNorm normalises with: the mixture of the source
    distribution (weight ``prior``) and the test estimate ``(mean, var)``; the estimate itself
    when ``prior`` is 0 (METHOD.md §10)."""
    if prior <= 0:
        return mean, var
    gap = mean - source_mean
    return (source_mean + (1 - prior) * gap,
            (1 - prior) * var + prior * source_var + prior * (1 - prior) * gap * gap)


def _batch_norm_with_stats(x: torch.Tensor, weight: torch.Tensor | None,
                           bias: torch.Tensor | None, eps: float
                           ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Batch-statistics BatchNorm of ``x`` and the batch's per-channel mean and unbiased
    variance, from one pass: the statistics the normalisation computes anyway (a separate
    ``var_mean`` over dims 0, 2, 3 of NCHW costs more than the normalisation itself)."""
    y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
    n = x.numel() // x.shape[1]
    var = (invstd.detach().pow(-2) - eps).clamp_min(0.0) * (n / max(n - 1, 1))
    return y, (mean.detach(), var)


@dataclass
class Fusion:
    """What :func:`fuse_norms` produced: the layout, the origin affine vector, and the names
    and source running statistics of every fused BatchNorm (in ``index`` order)."""

    layout: ParamLayout
    origin: torch.Tensor
    bn_names: list[str]
    bn_stats: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if isinstance(module, nn.BatchNorm2d):
        return "batchnorm"
    return None


def fuse_norms(model: nn.Module, adapted: list[str], store: ParamStore) -> Fusion:
    """Replace the ``adapted`` norm layers (and, in BatchNorm models, every BatchNorm2d) in
    place with fused layers reading ``store``. Refuses a model that is already fused."""
    if any(isinstance(m, (FusedLayerNorm, FusedBatchNorm)) for m in model.modules()):
        raise ValueError("model already has fused norm layers; build a fresh model per method")
    modules = dict(model.named_modules())
    layers = []
    for name in adapted:
        module = modules.get(name)
        kind = _kind(module) if module is not None else None
        if kind is None:
            raise ValueError(f"{name!r} is not a LayerNorm or BatchNorm2d of the model")
        if module.weight is None or module.weight.dim() != 1:
            raise ValueError(f"{name!r} has no 1-d affine parameters to adapt")
        channels = module.weight.numel()
        layers.append((name, kind, channels))
    layout = ParamLayout(layers)
    slots = {s.name: s for s in layout.slots}
    origin = []
    for slot in layout.slots:
        module = modules[slot.name]
        bias = module.bias if module.bias is not None else torch.zeros_like(module.weight)
        origin += [module.weight.detach().reshape(-1), bias.detach().reshape(-1)]
    origin_vec = torch.cat(origin).float().clone() if origin else torch.zeros(0)

    bn_names, bn_stats = [], []
    for name, module in modules.items():
        if isinstance(module, nn.BatchNorm2d):
            index = len(bn_names)
            bn_names.append(name)
            if module.running_mean is not None:
                stats = (module.running_mean.detach().clone(), module.running_var.detach().clone())
            else:
                stats = (torch.zeros(module.num_features), torch.ones(module.num_features))
            bn_stats.append(stats)
            _replace(model, name, FusedBatchNorm(module, slots.get(name), index, store))
        elif isinstance(module, nn.LayerNorm) and name in slots:
            _replace(model, name, FusedLayerNorm(module, slots[name], store))
    return Fusion(layout, origin_vec, bn_names, tuple(bn_stats))


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
