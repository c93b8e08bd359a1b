"""Quantized timm ``Attention``: both attention matmuls take fake-quantized operands."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from zoa_ros.core.quant.quantizers import ActQuantizer


class QuantAttention(nn.Module):
    """Wraps a timm ``Attention``; q, k, v are signed per-tensor, the post-softmax attention
    map unsigned on [0, 1] (PTQ4ViT uses a twin-uniform grid there; see docs/QUANTIZATION.md).

    The wrapped module's ``qkv`` and ``proj`` are expected to be ``QuantLayer`` already.
    """

    def __init__(self, attn: Attention, bits: int) -> None:
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise NotImplementedError("gated attention is not supported by the quantizer")
        self.attn = attn
        self.q_quant = ActQuantizer(bits, signed=True)
        self.k_quant = ActQuantizer(bits, signed=True)
        self.v_quant = ActQuantizer(bits, signed=True)
        self.map_quant = ActQuantizer(bits, signed=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        a = self.attn
        if attn_mask is not None or is_causal:
            raise NotImplementedError("masked attention is not supported by the quantizer")
        b, n, _ = x.shape
        qkv = a.qkv(x).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        scores = self.q_quant(q * a.scale) @ self.k_quant(k).transpose(-2, -1)
        weights = a.attn_drop(scores.softmax(dim=-1))
        out = self.map_quant(weights) @ self.v_quant(v)
        out = a.norm(out.transpose(1, 2).reshape(b, n, a.attn_dim))
        return a.proj_drop(a.proj(out))
