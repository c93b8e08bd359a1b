"""Real photographs that ship with scikit-image, for the demo and the tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

# Colour photographs bundled inside the scikit-image wheel (no pooch download needed).
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina")


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 HxWx3 RGB."""
    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    if name not in PHOTOS:
        raise KeyError(f"unknown sample photo {name!r}; choose from {PHOTOS}")
    return getattr(skimage.data, name)()


def write_photos(folder: str | Path, names: tuple[str, ...] = PHOTOS) -> list[Path]:
    """Write the photos as PNG files into ``folder`` (once) and return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(load_photo(name)).save(path)
        paths.append(path)
    return paths
