"""Finding and reading image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The most pixels a frame may have before anything decodes or allocates it: 8192 x 8192 = 67 Mpx,
# twice 8K UHD (7680 x 4320 = 33 Mpx) and room for square and panoramic sensors up to 8K a side.
# Decoded, such a frame is 201 MB of rgb8; the limit bounds what one message or file can cost,
# where OpenCV's own limit (2^30 pixels) let a 1.2 MB PNG decode to 1.2 GB in 7.8 s.
DEFAULT_MAX_PIXELS = 8192 * 8192


def find_images(root: str | Path) -> list[Path]:
    """All jpg/jpeg/png files under ``root`` (any nesting), sorted by path."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no .jpg/.jpeg/.png images found")
    return files


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them if there are fewer)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def check_pixels(width: int, height: int, max_pixels: int, what: str = "frame") -> None:
    """ValueError unless ``width`` x ``height`` is a non-empty size of at most ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad size {width}x{height}")
    if width * height > max_pixels:
        raise ValueError(f"{what} of {width}x{height} = {width * height} pixels exceeds "
                         f"max_pixels {max_pixels}")


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB; a clear error if it is not an image or its
    header claims more than ``max_pixels`` pixels (checked before decoding)."""
    try:
        image = Image.open(path)   # reads the header only
    except Image.DecompressionBombError as e:   # PIL's own limit, 179 Mpx
        raise ValueError(f"{path}: refused before decoding: {e}") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    with image:
        try:
            check_pixels(*image.size, max_pixels, "image")
        except ValueError as e:
            raise ValueError(f"{path}: refused before decoding: {e}") from None
        try:
            return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable image ({e})") from e
