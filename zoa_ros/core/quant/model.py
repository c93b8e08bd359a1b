"""Turn a timm classifier into a post-training fake-quantized one, and back from saved state."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from zoa_ros.core.quant.attention import QuantAttention
from zoa_ros.core.quant.quantizers import ActQuantizer, QuantLayer

PRESETS = {"none": None, "w8a8": (8, 8), "w6a6": (6, 6), "w4a4": (4, 4)}


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths of weights and activations; ``none`` keeps the model in FP32."""

    name: str = "w8a8"
    w_bits: int | None = 8
    a_bits: int | None = 8
    # The stem conv (weight-only) and the classifier keep at least this many bits, as the
    # MQBench Academic backend used for the paper's ResNet does.
    edge_bits: int = 8

    @classmethod
    def parse(cls, name: str) -> QuantConfig:
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown quantization {name!r}; choose one of {sorted(PRESETS)}")
        bits = PRESETS[key]
        return cls(key, None, None) if bits is None else cls(key, *bits)

    @property
    def enabled(self) -> bool:
        return self.w_bits is not None

    def to_dict(self) -> dict:
        return asdict(self)


def first_conv_name(model: nn.Module) -> str:
    """Name of the stem conv / patch embedding (kept weight-only, as in the paper's setup)."""
    name = model.pretrained_cfg.get("first_conv", "")
    if isinstance(name, (list, tuple)):
        name = name[0]
    if not name:
        raise ValueError(f"{type(model).__name__} has no 'first_conv' in its pretrained cfg")
    return name


def quantize_model(model: nn.Module, config: QuantConfig,
                   state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Wrap every Conv2d/Linear in a :class:`QuantLayer` and every timm ``Attention`` in a
    :class:`QuantAttention`, in place. Norm layers are left as they are.

    With ``state`` (from :func:`quant_state`), scales are restored instead of searched and the
    activation quantizers come back calibrated; otherwise call :func:`calibrate` next.
    """
    if not config.enabled:
        return model
    stem = first_conv_name(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, Attention):
            _replace(model, name, QuantAttention(module, config.a_bits))
    stem = next(name for name, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and name.endswith(stem))
    head = next(name for name, m in model.named_modules() if m is model.get_classifier())
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            scale = None if state is None else _require(state, f"{name}.weight_scale")
            w_bits, a_bits = config.w_bits, config.a_bits
            if name in (stem, head):
                w_bits, a_bits = max(w_bits, config.edge_bits), max(a_bits, config.edge_bits)
            _replace(model, name, QuantLayer(module, w_bits, a_bits, weight_only=(name == stem),
                                             weight_scale=scale))
    if state is not None:
        load_quant_state(model, state)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor) -> None:
    """Search every activation quantizer's range on ``images`` in one forward pass, in
    network order (each quantizer sees the already-quantized output of the layers before it)."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    for q in quantizers:
        q.calibrating = True
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
    for layer in model.modules():
        if isinstance(layer, QuantLayer):
            layer.finish_calibration()
    missed = [q for q in quantizers if q.calibrating]
    if missed:
        raise RuntimeError(f"{len(missed)} activation quantizers saw no data during calibration")


def quant_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantizer's frozen state (weight channel scales, activation scales and signs)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer):
            out[f"{name}.weight_scale"] = module.weight_scale.detach().clone()
            out[f"{name}.bias_correction"] = module.bias_correction.detach().clone()
        elif isinstance(module, ActQuantizer):
            out[f"{name}.scale"] = module.scale.detach().clone()
            out[f"{name}.signed"] = module.signed.detach().clone()
    return out


def load_quant_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore activation quantizer scales; the key sets must match exactly."""
    expected = set(quant_state(model))
    if expected != set(state):
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"quantizer state does not fit this model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer):
            module.set_bias_correction(state[f"{name}.bias_correction"])
            module.finish_calibration()
        elif isinstance(module, ActQuantizer):
            module.scale.copy_(state[f"{name}.scale"])
            module.signed.copy_(state[f"{name}.signed"])


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"quantizer state has no {key!r}: it was made for another model")
    return state[key]


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
