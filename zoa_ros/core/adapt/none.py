"""No adaptation: the quantized model in eval mode (BatchNorm uses its source running stats)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.model.pack import ModelPack


class NoAdapt(AdaptMethod):
    """The reference point: one forward per prediction, nothing learned, nothing stored."""

    name: ClassVar[str] = "none"

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        super().__init__(model, pack, config, generator)
        model.eval()
        self.device = next(model.parameters()).device

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x.to(self.device))
        self.costs.forward_passes += 1
        self.costs.frames_predicted += x.shape[0]
        return logits

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> None:
        """Nothing to learn: no forward pass, no cost."""
        return None

    def reset(self) -> None:
        pass
