"""Small pieces shared by the baseline methods: config parsing, cost counting, entropy."""

from __future__ import annotations

import dataclasses
import threading
from typing import TypeVar

import torch

from zoa_ros.core.adapt.base import Costs

C = TypeVar("C")


def config_from_dict(cls: type[C], values: dict, method: str) -> C:
    """``cls(**values)`` refusing unknown keys (``preset`` is ignored: baselines have no preset
    file; their defaults live in the config dataclass)."""
    values = {k: v for k, v in values.items() if k != "preset"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {method} settings {unknown}; known: {sorted(known)}")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


class CostCounter:
    """Thread-safe increments of a :class:`Costs`."""

    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self._lock = threading.Lock()

    def __call__(self, **amounts: int) -> None:
        with self._lock:
            for key, value in amounts.items():
                setattr(self.costs, key, getattr(self.costs, key) + value)


def entropy_per_sample(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(logits))`` of every row."""
    logp = logits.log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1)
