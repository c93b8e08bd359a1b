"""Quantizer modules: a calibrated activation quantizer and wrappers for Conv2d/Linear."""

from __future__ import annotations

import torch
from torch import nn

from zoa_ros.core.quant.fake_quant import (
    fake_quant_inference,
    qrange,
    quantize_weight,
    search_channel_scales,
    search_scale,
)


class ActQuantizer(nn.Module):
    """Per-tensor activation fake-quantizer with a frozen scale.

    While ``calibrating`` is set, the next forward picks the grid (unsigned if the observed tensor
    is non-negative, else symmetric signed) and searches the scale on that tensor, then
    quantizes it, so layers downstream calibrate on already-quantized inputs.
    """

    def __init__(self, bits: int, signed: bool | None = None) -> None:
        super().__init__()
        self.bits = bits
        self.fixed_sign = signed
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("signed", torch.tensor(True if signed is None else signed))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32), persistent=False)
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            signed = bool(x.min() < 0) if self.fixed_sign is None else self.fixed_sign
            self.signed.fill_(signed)
            self.scale.copy_(search_scale(x, self.bits, signed))
            self.calibrating = False
        qmin, qmax = qrange(self.bits, bool(self.signed))
        if torch.is_grad_enabled() and x.requires_grad:
            # torch's fused kernel passes gradients straight through (gradient baselines).
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point,
                                                         qmin, qmax)
        return fake_quant_inference(x, self.scale, qmin, qmax)   # the same numbers, faster

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class QuantLayer(nn.Module):
    """A Conv2d or Linear with per-output-channel fake-quantized weights and, unless
    ``weight_only``, a fake-quantized input. The wrapped module keeps its own forward (so timm's
    ``Conv2dSame`` keeps its TF padding).

    ``bias_correction`` (per output channel) removes the mean output error that quantization
    introduces; it is measured during calibration against the float weights and input and folded
    into the layer's bias, so inference pays nothing for it.
    """

    def __init__(self, layer: nn.Module, w_bits: int, a_bits: int, weight_only: bool = False,
                 weight_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.w_bits = w_bits
        if weight_scale is None:
            weight_scale = search_channel_scales(layer.weight, w_bits)
        self.register_buffer("weight_scale", weight_scale.detach().clone())
        self.register_buffer("bias_correction", torch.zeros(layer.weight.shape[0]))
        self.input_quant = None if weight_only else ActQuantizer(a_bits)
        self.float_weight: torch.Tensor | None = layer.weight.detach().clone()
        self.float_bias = None if layer.bias is None else layer.bias.detach().clone()
        with torch.no_grad():
            layer.weight.copy_(quantize_weight(layer.weight, self.weight_scale, w_bits))
        layer.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calibrating = self.float_weight is not None and (
            self.input_quant is None or self.input_quant.calibrating)
        x_in = x
        if self.input_quant is not None:
            x = self.input_quant(x)
        out = self.layer(x)
        if calibrating:
            self.set_bias_correction(self._measure_bias_error(x_in, out))
            out = self.layer(x)
        return out

    @torch.no_grad()
    def _measure_bias_error(self, x_float: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        quantized = self.layer.weight.detach().clone()
        self.layer.weight.copy_(self.float_weight)
        reference = self.layer(x_float)
        self.layer.weight.copy_(quantized)
        channel = out.dim() - 1 if isinstance(self.layer, nn.Linear) else 1
        dims = [d for d in range(out.dim()) if d != channel]
        return (reference - out).mean(dim=dims)

    @torch.no_grad()
    def set_bias_correction(self, correction: torch.Tensor) -> None:
        """Store the per-channel correction and fold it into the wrapped layer's bias."""
        self.bias_correction.copy_(correction)
        base = torch.zeros_like(correction) if self.float_bias is None else self.float_bias
        self.layer.bias = nn.Parameter(base + correction, requires_grad=False)

    def finish_calibration(self) -> None:
        """Drop the float weight copy kept for bias correction."""
        self.float_weight = None

    # timm and the feature hooks read these through the wrapper.
    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias
