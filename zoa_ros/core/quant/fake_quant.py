"""Uniform fake quantization and the clipping-range search used to calibrate it.

Written here rather than taken from a library: brevitas and torchao target quantization-aware
training or real int8 kernels and either rewrite the norm layers (folding BN) or need export
graphs; the method needs simulated (fake) quantization with frozen scales, unfolded
full-precision norm layers whose affine parameters stay ordinary tensors, and quantized
attention matmuls in timm ViTs. That is ~200 lines, so we keep them here (docs/QUANTIZATION.md).
"""

from __future__ import annotations

import torch

# Candidate clipping ratios of the range search: 0.01 .. 1.2 times the min-max range
# (101 candidates), as in PTQ4ViT's search space.
SEARCH_RATIOS = torch.linspace(0.01, 1.2, 101)
# Activations are searched on at most this many elements (an evenly strided subsample).
MAX_SEARCH_ELEMENTS = 1 << 18


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid of a ``bits``-bit quantizer: symmetric signed or unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def fake_quant(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round ``x / scale`` to the integer grid ``[qmin, qmax]`` and scale back (zero point 0)."""
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def fake_quant_inference(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int
                         ) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine`` with zero point 0, number for number (round
    ``x * (1 / scale)`` half to even, clamp, scale back), without the gradient mask that kernel
    also computes: several times faster on CPU, for forward passes that need no gradient."""
    return torch.clamp_(torch.round(x * torch.reciprocal(scale)), qmin, qmax).mul_(scale)


def search_scale(x: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Per-tensor scale minimising the mean squared quantization error of ``x``."""
    flat = x.detach().reshape(-1).float()
    if flat.numel() > MAX_SEARCH_ELEMENTS:
        flat = flat[:: flat.numel() // MAX_SEARCH_ELEMENTS + 1]
    qmin, qmax = qrange(bits, signed)
    peak = flat.abs().max() if signed else flat.clamp(min=0).max()
    peak = torch.clamp(peak, min=1e-8)
    scales = SEARCH_RATIOS * peak / qmax
    errors = torch.stack([(fake_quant(flat, s, qmin, qmax) - flat).pow(2).mean() for s in scales])
    return scales[torch.argmin(errors)].clone()


def search_channel_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scales minimising each channel's squared weight error."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    qmin, qmax = qrange(bits, signed=True)
    peak = torch.clamp(w.abs().amax(dim=1), min=1e-8)
    best_err = torch.full_like(peak, float("inf"))
    best = peak / qmax
    for ratio in SEARCH_RATIOS:
        scale = ratio * peak / qmax
        err = (fake_quant(w, scale[:, None], qmin, qmax) - w).pow(2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, scale, best)
    return best


def quantize_weight(weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize a weight tensor with per-output-channel ``scales``."""
    qmin, qmax = qrange(bits, signed=True)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return fake_quant(weight, scales.reshape(shape).to(weight.dtype), qmin, qmax)
