"""What the torch reference would classify single frames with now: each BatchNorm's
normalization and the activation shift, read from the model and its adaptation method.

Whatever produced them (source statistics, the running estimate, ZOA's affine and ε, a
statistics rule still to come) they are per-BatchNorm ``(mean, var, γ, β)``, which is all an
integer runtime needs to fold (:mod:`.fold`)."""

from __future__ import annotations

import torch
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.adapt.fused_norm import FusedBatchNorm
from zoa_ros.core.backend.fold import BnNorm


def prediction_norms(model: nn.Module, method: AdaptMethod | None = None
                     ) -> dict[str, BnNorm]:
    """Every BatchNorm's normalization for a prediction by module name: with the parameter set
    and normalisation ``method`` predicts with now, where it says (ZOA: the source model while
    its shift gate is closed), else as a prediction on this thread would."""
    choose = getattr(method, "prediction_params", None)
    pinned = choose() if choose is not None else None
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, FusedBatchNorm):
            out[name] = BnNorm(*m.prediction_norm(pinned), m.eps)
        elif isinstance(m, nn.BatchNorm2d):
            ones, zeros = torch.ones(m.num_features), torch.zeros(m.num_features)
            out[name] = BnNorm(m.running_mean, m.running_var,
                               ones if m.weight is None else m.weight,
                               zeros if m.bias is None else m.bias, m.eps)
    return out


def prediction_shift(method: AdaptMethod) -> torch.Tensor | None:
    """The activation shift the method adds to the pre-logits feature (ZOA), or ``None``."""
    shift = getattr(method, "pre_logits_shift", None)
    return None if shift is None else shift()
