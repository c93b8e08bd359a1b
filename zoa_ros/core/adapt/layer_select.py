"""Which normalization layers ZOA adapts: the reference's choice generalised to any depth.

The reference adapts ViT-B ``norm1``/``norm2`` of blocks 1..8 of 12 and ResNet-50 ``bn1``/``bn2``
of ``layer1`` blocks 1-2, ``layer2`` and ``layer3`` (blocks 1..12 of 16). The ``auto`` rule:

* *blocks* are the residual blocks in network order: the children of ``nn.Sequential``
  containers that hold norm layers (ViT ``blocks.i``, ResNet ``layerN.i``, EfficientNet
  ``blocks.s.i``); stems, heads and downsample branches are not blocks;
* adapt blocks ``[block_start, round(end_fraction · N))`` - skip the first block(s) and the last
  part of the depth (``end_fraction`` 0.75 for LayerNorm models, 0.8 for BatchNorm models
  reproduces both reference choices exactly: 12 → 1..8, 16 → 1..12);
* within a block adapt the norms that are its direct children; in BatchNorm models skip the
  last of them (the norm on the residual branch output: ``bn3`` of a bottleneck, the
  projection BN of an inverted residual). Downsample BNs are not direct children.

``all`` selects every affine norm of the family; a list selects names or ``fnmatch`` globs.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

from torch import nn

DEFAULT_END_FRACTION = {"layernorm": 0.75, "batchnorm": 0.8}
_NORM_TYPE = {"layernorm": nn.LayerNorm, "batchnorm": nn.BatchNorm2d}


def norm_layers(model: nn.Module, family: str) -> list[str]:
    """Names of every affine norm layer of the family's type, in network order."""
    kind = _NORM_TYPE[family]
    return [name for name, m in model.named_modules()
            if isinstance(m, kind) and getattr(m, "weight", None) is not None]


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks (see module docstring), in network order."""
    norms = nn.LayerNorm | nn.modules.batchnorm._BatchNorm
    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        if any(name.startswith(f"{b}.") for b in found):
            continue
        for child_name, child in module.named_children():
            if isinstance(child, nn.Sequential | norms):
                continue
            if any(isinstance(m, norms) for m in child.modules()):
                found.append(f"{name}.{child_name}" if name else child_name)
    return found


def select_layers(model: nn.Module, family: str, layers: str | list[str] = "auto",
                  block_start: int = 1, end_fraction: float | None = None) -> list[str]:
    """Names of the norm layers to adapt, in network order (see module docstring)."""
    if family not in _NORM_TYPE:
        raise ValueError(f"unknown model family {family!r}")
    candidates = norm_layers(model, family)
    if isinstance(layers, str) and layers == "all":
        chosen = candidates
    elif isinstance(layers, str) and layers == "auto":
        chosen = _auto(model, family, candidates, block_start,
                       DEFAULT_END_FRACTION[family] if end_fraction is None else end_fraction)
    elif isinstance(layers, list | tuple):
        chosen_set: set[str] = set()
        for pattern in layers:
            hits = [n for n in candidates if fnmatchcase(n, str(pattern))]
            if not hits:
                raise ValueError(f"layer pattern {pattern!r} matches no {family} layer "
                                 f"(e.g. {candidates[:3]})")
            chosen_set.update(hits)
        chosen = [n for n in candidates if n in chosen_set]
    else:
        raise ValueError(f"layers must be 'auto', 'all' or a list of names/globs, not {layers!r}")
    if not chosen:
        raise ValueError(f"no {family} layers selected for adaptation (layers={layers!r}, "
                         f"block_start={block_start}, end_fraction={end_fraction})")
    return chosen


def _auto(model: nn.Module, family: str, candidates: list[str], block_start: int,
          end_fraction: float) -> list[str]:
    blocks = residual_blocks(model)
    end = math.floor(end_fraction * len(blocks) + 0.5)
    chosen: list[str] = []
    allowed = set(candidates)
    for block in blocks[block_start:end]:
        module = model.get_submodule(block)
        direct = [f"{block}.{n}" for n, _ in module.named_children()
                  if f"{block}.{n}" in allowed]
        if family == "batchnorm":
            direct = direct[:-1]
        chosen += direct
    return chosen
