"""Preprocessing taken from the model's pretrained cfg (resize, center crop, normalize).

The geometry is timm's eval transform for the model's data config. It works on PIL images, and
its antialiased bicubic resize of a 640x480 camera frame took 4.5 ms on one core here, a tenth of
the model. Where that transform is a plain ``Resize`` + ``CenterCrop`` (timm's "center" and
"squash" crop modes, bilinear or bicubic), the same geometry runs on the uint8 pixels with
torch's antialiased uint8 kernel, which is written to match PIL: within one intensity level when
shrinking, and 4.2x faster at 640x480 (``zoa-ros bench preprocess``, docs/lab/node-latency.md §4.6).
Other transforms ("border" crop mode, other interpolations) run through timm's PIL transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torch import nn

_TENSOR_MODES = {T.InterpolationMode.BILINEAR: "bilinear", T.InterpolationMode.BICUBIC: "bicubic"}
# The longest side may be at most this many times the shortest. The eval transform resizes the
# shorter side to ~256 pixels before it crops, so a 1 x 65535 frame (a few KB) would be resized
# to 256 x 16.8 M pixels (12.9 GB) first; at 64:1 the resize holds at most 12.6 MB, and the
# widest real cameras (32:9, stitched 360-degree panoramas at ~10:1) are far inside it.
MAX_ASPECT = 64


class Preprocessor:
    """Turns RGB images (PIL or uint8 HxWx3 / HxW / HxWx4 arrays) into a normalized batch tensor.

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
        self.resize_crop = tensor_geometry(self.geometry)

    @classmethod
    def for_model(cls, model: nn.Module) -> Preprocessor:
        return cls(resolve_model_data_config(model))

    @property
    def fast(self) -> bool:
        """True when the geometry runs on uint8 tensors rather than through PIL."""
        return self.resize_crop is not None

    def crop_tensor(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Resize + center crop only: uint8 3xHxW at the model's input size (no normalization)."""
        if self.resize_crop is None:
            return self.pil_crop(image)
        pixels = to_rgb_array(image)
        if not pixels.flags.writeable:   # e.g. a view of a message's bytes: torch wants to own it
            pixels = pixels.copy()
        return self.resize_crop(torch.from_numpy(pixels).permute(2, 0, 1))

    def pil_crop(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """:meth:`crop_tensor` through timm's PIL transform, whatever the geometry (the
        reference the tensor path is measured against)."""
        tensor = self.geometry(to_pil(image))
        return tensor.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)

    def crop(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize + center crop only: uint8 HxWx3 at the model's input size (no normalization).

        Corruptions are applied to this crop, as ImageNet-C corrupts 224x224 crops.
        """
        return np.ascontiguousarray(self.crop_tensor(image).permute(1, 2, 0).numpy())

    def normalize(self, crops: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 NxHxWx3 crops (already at input size) to a normalized float NCHW tensor."""
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(crops))))
        return self._normalize(batch.permute(0, 3, 1, 2))

    def __call__(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        return self._normalize(torch.stack([self.crop_tensor(image) for image in images]))

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> normalized float NCHW (contiguous)."""
        return (batch.float().div_(255.0) - self.mean).div_(self.std).contiguous()


def tensor_geometry(transform: Callable) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """timm's eval transform as a function of uint8 3xHxW tensors, or None where it is not a
    ``Resize`` (bilinear / bicubic, antialiased) followed by a ``CenterCrop``."""
    steps = [t for t in getattr(transform, "transforms", ())
             if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")]
    if len(steps) != 2 or type(steps[0]) is not T.Resize or type(steps[1]) is not T.CenterCrop:
        return None
    resize, crop = steps
    mode = _TENSOR_MODES.get(resize.interpolation)
    if mode is None or resize.antialias is False:
        return None

    def resize_crop(image: torch.Tensor) -> torch.Tensor:
        size = resized_size(image.shape[-2:], resize.size, resize.max_size)
        # a channels-last uint8 batch selects torch's vectorised antialiased kernel
        x = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
        x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
        return TF.center_crop(x[0], crop.size)

    return resize_crop


def resized_size(hw: Sequence[int], size: int | Sequence[int], max_size: int | None
                 ) -> tuple[int, int]:
    """(h, w) after torchvision's ``Resize(size, max_size=max_size)`` of an ``hw`` image: an int
    (or 1-sequence) sets the shorter side and keeps the aspect ratio, a pair is (h, w).
    torchvision's own computation is private (``_compute_resized_output_size``)."""
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    short_target = int(size[0] if isinstance(size, Sequence) else size)
    h, w = int(hw[0]), int(hw[1])
    short, long = min(h, w), max(h, w)
    new_short, new_long = short_target, int(short_target * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if h <= w else (new_long, new_short)


def check_aspect(height: int, width: int) -> None:
    """ValueError when the longer side exceeds :data:`MAX_ASPECT` times the shorter."""
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise ValueError(f"aspect ratio of {width}x{height} beyond {MAX_ASPECT}:1 (resizing it "
                         "for the model would take too much memory)")


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB from PIL or a uint8 array (HxW grey, HxWx3 RGB, HxWx4 RGBA); a
    ValueError for anything else, an empty image or one beyond :data:`MAX_ASPECT`."""
    if isinstance(image, Image.Image):
        check_aspect(image.height, image.width)
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim >= 2 and 0 in array.shape[:2]:
        raise ValueError(f"empty image of shape {array.shape}")
    if array.ndim >= 2:
        check_aspect(*array.shape[:2])
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return array[:, :, :3]
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL RGB image from PIL or a uint8 array (HxW grey, HxWx3 RGB, HxWx4 RGBA)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(to_rgb_array(image)), "RGB")
