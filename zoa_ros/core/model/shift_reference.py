"""What clean input looks like to the model: the reference of the shift gate (no-harm
adaptation, docs/METHOD.md §10).

Measured once, at calibration, on the clean calibration images, and stored in the model pack:

* the pooled per-channel mean and variance of the early features (:func:`early_module`: the
  CNN stem conv, ViT patch + position embeddings) over all images - the *stem reference*;
* three null distributions, per window of ``m`` images (:data:`WINDOW_IMAGES`): the divergence
  (:func:`jeffreys`) between the stem reference and the pooled stem statistics of ``m``
  consecutive images, the mean prediction entropy of the unadapted model over them, and the
  divergence between the *scene variances* (:func:`scene_variance`) of those ``m`` images and
  of the ``m`` after them (:func:`variance_divergence`) - how much related content alone moves
  a window, the null of a domain change.

The windows are ``m`` consecutive images of the image list in its given (sorted) order, every
start position, wrapping around, for every ``m`` of :data:`WINDOW_IMAGES` that leaves at least
four disjoint windows (``m <= images / 4``; a stream window with more images than that uses
the largest ``m`` there is, whose threshold is higher: few calibration images make a cautious
gate): in an ImageNet-style folder the sorted list is in class order,
so a window holds related classes, as a camera sees them. A shift test on a stream window of
``m`` distinct images then has the false-alarm rate ``α`` on clean input at the threshold
:meth:`ShiftReference.threshold` ``(m, α)`` - the ``1 − α`` quantile of the null values -
provided the clean stream is no more correlated than class-ordered images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoa_ros.core.model.features import EarlyStats, early_module

# 1: how far single clean photos lie (the gate's per-frame rest; packs before it lack it)
WINDOW_IMAGES = (1, 2, 4, 8, 16, 32)
MIN_IMAGES = 8    # fewer calibration images: no reference (and no gate)
STEM = "stem"
ENTROPY = "entropy"
CHANGE = "change"
KINDS = (STEM, ENTROPY, CHANGE)
_PREFIX = "shift."


def jeffreys(m_d: torch.Tensor, v_d: torch.Tensor, m_c: torch.Tensor, v_c: torch.Tensor,
             eps: float = 1e-8) -> float:
    """Channel mean of the symmetric KL between N(m_d, v_d) and N(m_c, v_c)."""
    sq = (m_d - m_c) ** 2
    d = (v_d + sq) / (2 * v_c + eps) - 0.5 + (v_c + sq) / (2 * v_d + eps) - 0.5
    return float(d.mean())


def scene_variance(frames: Sequence[EarlyStats]) -> torch.Tensor:
    """The mean over frames of each frame's own per-channel variance. Unlike the pooled
    variance it leaves out how much the frames' means differ, which content decides: a contrast
    change scales it by one factor for every scene, so it tells domains apart, not scenes."""
    return torch.stack([f.var.double() for f in frames]).mean(dim=0)


def variance_divergence(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> float:
    """Channel mean of the symmetric KL between zero-mean Gaussians of variances ``a``, ``b``."""
    ratio = (a + eps) / (b + eps)
    return float(((ratio + 1 / ratio) / 2 - 1).mean())


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's softmax."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass
class ShiftReference:
    """The stem reference and, per window size, the sorted null values of each test."""

    stem_mean: torch.Tensor
    stem_var: torch.Tensor
    nulls: dict[tuple[str, int], torch.Tensor]   # (kind, window images) -> sorted values
    images: int

    @property
    def window_sizes(self) -> list[int]:
        return sorted({m for _, m in self.nulls})

    def window_images(self, frames: int, dwell: int) -> int:
        """The largest calibrated window size at most ``frames // dwell`` images."""
        wanted = frames // dwell
        sizes = [m for m in self.window_sizes if m <= wanted]
        if not sizes:
            raise ValueError(f"a window of {frames} frames at dwell {dwell} holds {wanted} "
                             f"images; the pack's shift reference starts at "
                             f"{min(self.window_sizes)}")
        return sizes[-1]

    def threshold(self, kind: str, window_images: int, false_alarm: float) -> float:
        """The ``1 − false_alarm`` quantile of the null values (the higher order statistic)."""
        if not 0.0 < false_alarm < 1.0:
            raise ValueError(f"false_alarm must be in (0, 1), not {false_alarm}")
        values = self.nulls[(kind, window_images)]
        index = min(len(values) - 1, int(np.ceil((1.0 - false_alarm) * len(values))))
        return float(values[index])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{_PREFIX}stem_mean": self.stem_mean.float().contiguous(),
               f"{_PREFIX}stem_var": self.stem_var.float().contiguous()}
        out.update({f"{_PREFIX}{kind}_null.{m}": v.float().contiguous()
                    for (kind, m), v in self.nulls.items()})
        return out

    def describe(self) -> dict:
        """For the pack's metadata: what was measured, and the thresholds at 1 %."""
        return {"images": self.images, "window_images": self.window_sizes,
                "order": "the image list's sorted order (class order for wnid folders)",
                "thresholds_at_1pct": {f"{kind}.{m}": round(self.threshold(kind, m, 0.01), 6)
                                       for kind, m in sorted(self.nulls)}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], images: int) -> ShiftReference | None:
        """The reference stored in a pack's tensors, or ``None`` (a pack made before it).
        Layer noise that packs of an earlier version also hold is not read."""
        if f"{_PREFIX}stem_mean" not in tensors:
            return None
        nulls = {}
        for key, value in tensors.items():
            if key.startswith(_PREFIX) and "_null." in key:
                kind, m = key[len(_PREFIX):].split("_null.")
                nulls[(kind, int(m))] = value
        return cls(tensors[f"{_PREFIX}stem_mean"], tensors[f"{_PREFIX}stem_var"], nulls, images)


def window_nulls(stem: Sequence[EarlyStats], entropies: torch.Tensor,
                 mean: torch.Tensor, var: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """The tests' values over every window of ``m`` consecutive images (wrapping), sorted."""
    n = len(stem)
    nulls = {}
    for m in (m for m in WINDOW_IMAGES if 4 * m <= n):
        stem_values, entropy_values = [], []
        for start in range(n):
            idx = [(start + k) % n for k in range(m)]
            pooled = stem[idx[0]]
            for i in idx[1:]:
                pooled = pooled + stem[i]
            stem_values.append(jeffreys(mean, var, pooled.mean, pooled.var))
            entropy_values.append(float(entropies[idx].mean()))
        nulls[(STEM, m)] = torch.tensor(sorted(stem_values), dtype=torch.float64)
        nulls[(ENTROPY, m)] = torch.tensor(sorted(entropy_values), dtype=torch.float64)
        scenes = [scene_variance([stem[(start + k) % n] for k in range(m)])
                  for start in range(n)]
        nulls[(CHANGE, m)] = torch.tensor(sorted(
            variance_divergence(scenes[start], scenes[(start + m) % n]) for start in range(n)),
            dtype=torch.float64)
    return nulls


@torch.no_grad()
def measure_reference(model: nn.Module, images: Sequence[torch.Tensor | Path],
                      load: Callable[[Sequence], torch.Tensor], batch_size: int = 32
                      ) -> ShiftReference:
    """Run the unadapted model (eval mode: the source statistics) over ``images`` in their
    order (``load(chunk)`` -> a normalised batch) and build the reference."""
    if len(images) < MIN_IMAGES:
        raise ValueError(f"the shift reference needs at least {MIN_IMAGES} images")
    module, prefix, _ = early_module(model)
    token = prefix > 0 or getattr(model, "patch_embed", None) is not None
    captured: list[torch.Tensor] = []
    handles = [module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))]
    was_training = model.training
    model.eval()
    stem: list[EarlyStats] = []
    entropies = []
    try:
        for a in range(0, len(images), batch_size):
            captured.clear()
            logits = model(load(images[a:a + batch_size]))
            out = captured[-1]
            for row in out:
                row = row[prefix:][None] if token else row[None]
                stem.append(EarlyStats.of(row, channel_dim=2 if token else 1))
            entropies.append(entropy(logits))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    pooled = stem[0]
    for s in stem[1:]:
        pooled = pooled + s
    mean, var = pooled.mean, pooled.var
    return ShiftReference(mean, var, window_nulls(stem, torch.cat(entropies), mean, var),
                          len(stem))
