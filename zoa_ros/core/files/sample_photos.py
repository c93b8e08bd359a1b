"""Real photographs that ship with scikit-image (no downloads): what the default model pack is
calibrated on, and what the demo's camera and the tests show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage
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


def photo_set(names: tuple[str, ...] = PHOTOS) -> dict:
    """What identifies the photos ``names``: their names and the scikit-image release they
    ship in."""
    return {"names": list(names), "scikit_image": skimage.__version__}


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
