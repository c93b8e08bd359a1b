"""Domain-change detection on statistics of the earliest features (METHOD.md §4.2, §9.4).

The signal (ViT: patch + position embeddings without prefix tokens; CNN: stem conv output) does
not depend on adapted parameters. Divergence between the running domain estimate ``(m_d, v_d)``
and the batch ``(m_c, v_c)`` is the channel mean of the symmetric (Jeffreys) KL of diagonal
Gaussians. Detection runs once per batch; the estimate update ``(1 − ρ)·old + ρ·new`` with
ρ = 0.36 equals the reference's two 0.8/0.2 updates per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoa_ros.core.model.shift_reference import jeffreys


@dataclass(frozen=True)
class Detection:
    changed: bool = False
    divergence: float | None = None
    skipped: bool = False   # batch too small: no test and no update


class DomainDetector:
    """Running per-channel mean/variance of the current domain and the change test."""

    def __init__(self, threshold: float, momentum: float = 0.36, min_batch: int = 64,
                 eps: float = 1e-8) -> None:
        self.threshold = threshold
        self.momentum = momentum
        self.min_batch = min_batch
        self.eps = eps
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def observe(self, mean: torch.Tensor, var: torch.Tensor, batch_size: int) -> Detection:
        """Test the batch against the estimate, clear it on a change, then fold the batch in."""
        if batch_size < self.min_batch:
            return Detection(skipped=True)
        changed, divergence = False, None
        if self.mean is not None:
            divergence = jeffreys(self.mean, self.var, mean, var, self.eps)
            changed = divergence > self.threshold
            if changed:
                self.clear()
        self.update(mean, var)
        return Detection(changed, divergence)

    def update(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Fold a batch into the estimate (initialise it if empty)."""
        if self.mean is None:
            self.mean, self.var = mean.clone(), var.clone()
        else:
            r = self.momentum
            self.mean = (1 - r) * self.mean + r * mean
            self.var = (1 - r) * self.var + r * var

    def clear(self) -> None:
        self.mean = self.var = None
