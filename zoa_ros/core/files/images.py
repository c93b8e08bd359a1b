"""Finding and reading image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB; a clear error if it is not an image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
