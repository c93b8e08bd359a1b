"""Feature taps: the per-layer features that ZOA's loss aligns with the clean source.

* LayerNorm models (timm ViT/DeiT): for block ``i`` the CLS token after the block, passed
  through the next LayerNorm (``blocks[i+1].norm1``); for the last block the final norm, i.e.
  the pre-logits feature. 12 x 768 for ViT-B.
* BatchNorm models (ResNet, EfficientNet): global-average-pooled outputs of the timm
  ``feature_info`` stages with reduction >= 4 except the last, plus the pooled pre-logits
  feature. ResNet-50: layer1..3 + pooled layer4 (256 + 512 + 1024 + 2048), as the reference.

The last tap is always the pre-logits feature, whose classifier output is the prediction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from zoa_ros.core.model.factory import model_family


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

