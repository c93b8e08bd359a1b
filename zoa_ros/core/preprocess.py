"""Preprocessing taken from the model's pretrained cfg (resize, center crop, normalize)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torch import nn


class Preprocessor:
    """Turns RGB images (PIL or uint8 HxWx3 / HxW arrays) into a normalized batch tensor.

    The geometry (resize the shorter side to ``size / crop_pct``, center crop ``size``,
    interpolation) and the normalization come from the model's pretrained cfg via timm, so a
    checkpoint trained with other statistics (e.g. mean = std = 0.5 for TF-Lite models) gets them.
    """

    def __init__(self, data_config: dict) -> None:
        self.data_config = dict(data_config)
        self.geometry: Callable = create_transform(**{**self.data_config, "mean": (0, 0, 0),
                                                      "std": (1, 1, 1)}, is_training=False)
        self.mean = torch.tensor(self.data_config["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(self.data_config["std"]).view(1, 3, 1, 1)
        self.input_size = tuple(self.data_config["input_size"])

    @classmethod
    def for_model(cls, model: nn.Module) -> Preprocessor:
        return cls(resolve_model_data_config(model))

    def crop(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize + center crop only: uint8 HxWx3 at the model's input size (no normalization).

        Corruptions are applied to this crop, as ImageNet-C corrupts 224x224 crops.
        """
        tensor = self.geometry(to_pil(image))
        return (tensor.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)

    def normalize(self, crops: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 NxHxWx3 crops (already at input size) to a normalized float NCHW tensor."""
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(crops))))
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return (batch - self.mean) / self.std

    def __call__(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        return self.normalize([self.crop(image) for image in images])


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL RGB image from PIL or a uint8 array (HxW grey, HxWx3 RGB, HxWx4 RGBA)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(array[:, :, :3], "RGB")
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")
