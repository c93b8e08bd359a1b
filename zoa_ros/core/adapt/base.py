"""The interface every test-time adaptation method implements, and its cost counters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from zoa_ros.core.pack import ModelPack


@dataclass
class Costs:
    """What a method spent so far (counted by the method itself, checked by tests with hooks)."""

    forward_passes: int = 0      # full-model forward passes (a batch counts once)
    backward_passes: int = 0
    adapt_steps: int = 0
    frames_adapted: int = 0
    frames_predicted: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptMethod(ABC):
    """A test-time adaptation method bound to one quantized model.

    * :meth:`predict` classifies frames with the current parameters and changes nothing
      (streaming mode; safe to call from another thread while :meth:`adapt` runs).
    * :meth:`forward_and_adapt` is the paper's batch protocol: the logits for ``x`` are computed
      before the update, then one adaptation step is taken on ``x``.
    * :meth:`adapt` takes one step on buffered frames whose predictions were already returned.

    Randomness only from ``generator``; device from the model; no ``.cuda()`` here.
    """

    name: ClassVar[str]

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        self.model = model
        self.pack = pack
        self.config = dict(config)
        self.generator = generator
        self.costs = Costs()

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` (B x classes) with the current parameters; no state changes."""

    @abstractmethod
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` from before the update, then one adaptation step on ``x``."""

    def adapt(self, x: torch.Tensor) -> None:
        """One adaptation step on frames that were already classified."""
        self.forward_and_adapt(x)

    @abstractmethod
    def reset(self) -> None:
        """Back to the source model (keeps nothing adapted)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What should persist between missions (e.g. the knowledge bank); empty by default."""
        return {}

    def bank_summary(self) -> dict:
        """``{"entries": int, "bytes": int}`` of persistent knowledge."""
        return {"entries": 0, "bytes": 0}
