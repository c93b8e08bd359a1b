"""BatchNorm folded into the integer model: where each BatchNorm's numbers live in the graph and
how a normalization becomes per-channel weight scales and biases.

A BatchNorm after a convolution computes ``a·z + b`` per channel with ``a = γ / sqrt(σ² + eps)``
and ``b = β − μ·a``. The convolution's output ``z = s_x·s_w[c]·Σ q_x q_w + bias[c]`` (integer
accumulation, ``s_x`` the input scale, ``s_w`` the pack's per-channel weight scale, ``bias`` the
layer's bias with the pack's bias correction), so the pair folds into the convolution as weight
scale ``s_w·a`` and bias ``a·bias + b``: the int8 weights never change, whatever statistics,
affine or ZOA ε the adaptation produces. Where the input is quantized the bias is stored as
int32 on the grid ``s_x·s_w·a`` (what ONNX Runtime's QDQ fusion into ``QLinearConv`` expects).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

INT32 = np.iinfo(np.int32)
BIAS_LIMIT = 2.0**30   # largest folded int32 bias; the rest of int32 is the accumulator's


@dataclass(frozen=True)
class BnNorm:
    """The normalization one BatchNorm applies to single frames: statistics and affine."""

    mean: torch.Tensor
    var: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` in float64: the BatchNorm is ``a·x + b`` per channel."""
        mean, var, weight, bias = (t.detach().cpu().double().numpy()
                                   for t in (self.mean, self.var, self.weight, self.bias))
        a = weight / np.sqrt(var + self.eps)
        return a, bias - mean * a


@dataclass(frozen=True)
class Fold:
    """One BatchNorm folded into the convolution before it: the BatchNorm's and the quantized
    layer's module names in the torch model, and the graph initializers that carry the fold."""

    bn: str
    conv: str
    weight_scale: str           # float32 [C]: DequantizeLinear scale of the int8 weights
    bias: str                   # int32 [C] when the input is quantized, else float32 [C]
    bias_scale: str | None      # float32 [C]: DequantizeLinear scale of the int32 bias
    input_scale: float | None   # s_x of the quantized input; None for a float input (stem)

    def values(self, base_scale: np.ndarray, base_bias: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> dict[str, np.ndarray]:
        """The initializers of this fold for per-channel ``a``, ``b`` (see module docstring).

        ``base_scale``/``base_bias``: the layer's weight scales and bias before the fold. A
        channel whose ``|a|`` is so small that its bias would not fit int32 on the grid
        ``s_x·s_w·a`` (a nearly constant channel) gets the smallest ``|a|`` that fits, which
        changes its output by at most ``|b|·2⁻²⁰`` per unit of accumulator (:func:`min_scale`).
        """
        base_scale = base_scale.astype(np.float64)
        base_bias = base_bias.astype(np.float64)
        if self.input_scale is not None:
            a = min_scale(a, a * base_bias + b, self.input_scale * base_scale)
        scale = base_scale * a
        bias = a * base_bias + b
        out = {self.weight_scale: scale.astype(np.float32)}
        if self.input_scale is None:
            out[self.bias] = bias.astype(np.float32)
            return out
        grid = (self.input_scale * scale).astype(np.float32)
        out[self.bias] = np.clip(np.rint(bias / grid.astype(np.float64)), INT32.min,
                                 INT32.max).astype(np.int32)
        out[self.bias_scale] = grid
        return out


def min_scale(a: np.ndarray, bias: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``a`` with ``|a| >= |bias| / (grid · 2³⁰)`` per channel (sign kept, 0 counted as +):
    the folded bias ``bias / (grid · a)`` then fits int32 with room for the accumulator."""
    floor = np.abs(bias) / (grid * BIAS_LIMIT)
    sign = np.where(a < 0, -1.0, 1.0)
    return sign * np.maximum(np.abs(a), floor)


def folds_to_json(folds: list[Fold]) -> str:
    return json.dumps([asdict(f) for f in folds])


def folds_from_json(text: str) -> list[Fold]:
    return [Fold(**row) for row in json.loads(text)]
