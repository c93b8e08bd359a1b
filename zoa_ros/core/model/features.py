"""Feature taps: the per-layer features that ZOA's loss aligns with the clean source.

* LayerNorm models (timm ViT/DeiT): for block ``i`` the CLS token after the block, passed
  through the next LayerNorm (``blocks[i+1].norm1``); for the last block the final norm, i.e.
  the pre-logits feature. 12 x 768 for ViT-B.
* BatchNorm models (ResNet, EfficientNet): global-average-pooled outputs of the timm
  ``feature_info`` stages with reduction >= 4 except the last, plus the pooled pre-logits
  feature. ResNet-50: layer1..3 + pooled layer4 (256 + 512 + 1024 + 2048), as the reference.

The last tap is always the pre-logits feature, whose classifier output is the prediction.

The *early* features (:func:`early_module`: ViT patch + position embeddings, the CNN stem conv)
are what no adapted parameter touches; their per-channel statistics (:class:`EarlyStats`) feed
ZOA's domain detector and the shift gate's clean reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from zoa_ros.core.model.factory import model_family
from zoa_ros.core.quant.model import first_conv_name


@dataclass
class Features:
    """One forward pass: intermediate taps (B x C_i each), pre-logits (B x C) and logits."""

    taps: list[torch.Tensor]
    pre_logits: torch.Tensor
    logits: torch.Tensor

    def all(self) -> list[torch.Tensor]:
        return [*self.taps, self.pre_logits]


def tap_names(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are tapped (the pre-logits tap is implicit)."""
    if model_family(model) == "layernorm":
        blocks = model.blocks
        return [f"blocks.{i + 1}.norm1" for i in range(len(blocks) - 1)]
    stages = [f for f in model.feature_info if f["reduction"] >= 4][:-1]
    return [f["module"] for f in stages]


class FeatureExtractor:
    """Runs the model and returns :class:`Features`; ``head_input_shift`` (or ``None``) is
    added to the pre-logits feature before the classifier (activation shifting)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = tap_names(model)
        self.token = model_family(model) == "layernorm"

    @contextmanager
    def _hooks(self, sink: list[torch.Tensor]) -> Iterator[None]:
        handles = []
        for name in self.names:
            module = self.model.get_submodule(name)
            handles.append(module.register_forward_hook(
                lambda _m, _i, out: sink.append(self._pool(out))))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _pool(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, 0] if self.token else out.mean(dim=(2, 3))

    def __call__(self, x: torch.Tensor, head_input_shift: torch.Tensor | None = None) -> Features:
        taps: list[torch.Tensor] = []
        with self._hooks(taps):
            pre = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        head_in = pre if head_input_shift is None else pre + head_input_shift
        logits = self.model.get_classifier()(head_in)
        return Features(taps, pre, logits)


@dataclass(frozen=True)
class EarlyStats:
    """Per-channel count, sum and sum of squares (float64) of the detector's early features;
    records of single frames add up to the statistics of their batch."""

    count: int
    total: torch.Tensor
    squares: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, channel_dim: int) -> EarlyStats:
        x = x.detach().double().movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
        return cls(x.shape[0], x.sum(dim=0), (x * x).sum(dim=0))

    def __add__(self, other: EarlyStats) -> EarlyStats:
        return EarlyStats(self.count + other.count, self.total + other.total,
                          self.squares + other.squares)

    @property
    def mean(self) -> torch.Tensor:
        return (self.total / self.count).float()

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance."""
        n = self.count
        return ((self.squares - self.total * self.total / n) / max(n - 1, 1)).clamp(min=0).float()


def early_module(model: nn.Module) -> tuple[nn.Module, int, int]:
    """The module whose output feeds the detector, how many leading prefix tokens to drop
    (token models) and its channel count.

    ViT: ``pos_drop`` (patch embedding + position embedding, prefix tokens excluded). CNN: the
    stem conv named by ``pretrained_cfg['first_conv']`` - the ``QuantLayer`` wrapper when
    quantized, so the hooked output is what the rest of the network sees.
    """
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        module = getattr(model, "pos_drop", None)
        module = model.patch_embed if module is None else module
        return module, int(getattr(model, "num_prefix_tokens", 1)), int(model.embed_dim)
    name = first_conv_name(model)
    modules = dict(model.named_modules())
    module = modules.get(name)
    if module is None:
        module = next(m for n, m in modules.items() if n.endswith(name))
    return module, 0, int(module.weight.shape[0])
