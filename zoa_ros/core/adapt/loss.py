"""ZOA's unsupervised objective (FOA-BP form, METHOD.md §2): feature-statistics alignment with the
clean source plus prediction entropy.

``L = λ · mean_s [MSE(σ_T,s, σ_S,s) + MSE(μ_T,s, μ_S,s)] + mean_b H(softmax(logits_b))`` over the
tap segments ``s`` (``pack.tap_sizes``; unbiased std). For ViT's equal-size segments this equals
the global per-dimension MSE of §2.1; for ResNet it is §2.2. Logits are the *unshifted* ones.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from zoa_ros.core.model.features import Features


class Loss(NamedTuple):
    total: torch.Tensor
    discrepancy: torch.Tensor
    entropy: torch.Tensor


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy over the batch."""
    logp = logits.log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def zoa_loss(features: Features, source_mean: torch.Tensor, source_std: torch.Tensor,
             sizes: list[int], lam: float) -> Loss:
    parts = features.all()
    if [p.shape[1] for p in parts] != list(sizes):
        raise ValueError(f"feature sizes {[p.shape[1] for p in parts]} != pack tap sizes {sizes}")
    disc = parts[0].new_zeros(())
    offset = 0
    for f, n in zip(parts, sizes, strict=True):
        mu, sd = f.mean(dim=0), f.std(dim=0, unbiased=True)
        disc = disc + F.mse_loss(sd, source_std[offset:offset + n]) \
            + F.mse_loss(mu, source_mean[offset:offset + n])
        offset += n
    disc = disc / len(parts)
    ent = entropy(features.logits)
    return Loss(lam * disc + ent, disc, ent)


def source_statistics(pack, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The pack's source feature mean, std and tap sizes on ``device``, checked for agreement."""
    mean = pack.source_mean.float().to(device)
    std = pack.source_std.float().to(device)
    sizes = list(pack.tap_sizes)
    if sum(sizes) != mean.numel():
        raise ValueError(f"pack tap sizes {sizes} do not add up to its {mean.numel()} source "
                         "statistics")
    return mean, std, sizes
