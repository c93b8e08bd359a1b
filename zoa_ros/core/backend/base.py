"""What an inference backend offers the engine, and its error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from zoa_ros.core.backend.fold import BnNorm


class BackendError(ValueError):
    """A backend that cannot serve this engine (runtime missing, no QDQ support, a method or
    mode it cannot represent), with the reason."""


class Backend(Protocol):
    """Classifies frames in place of the torch reference and takes the reference's state.

    ``predict`` may run on one thread while ``apply`` runs on another; a prediction uses
    entirely the parameters before or entirely those after an ``apply``."""

    name: str

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalized frames ``x`` (N x 3 x H x W)."""

    def apply(self, norms: Mapping[str, BnNorm], shift: torch.Tensor | None = None) -> None:
        """Classify from now on with these per-BatchNorm normalizations and pre-logits shift."""
