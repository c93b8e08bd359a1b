"""ImageNet-C corruptions, computed on the fly, deterministically under an explicit seed.

Backed by the maintained ``imagecorruptions`` package (1.1.2, Michaelis et al., a port of
Hendrycks & Dietterich's ImageNet-C code to arbitrary image sizes): the 15 benchmark corruptions
(:data:`CORRUPTIONS`, standard order), its 4 held-out validation corruptions
(:data:`VALIDATION_CORRUPTIONS`) and ``"clean"`` (identity), at severity 1..5.

Patches, applied once when this module is imported, all scoped to ``imagecorruptions`` (no
global numpy / scikit-image / scipy attribute is modified):

1. ``pkg_resources`` (removed in setuptools >= 81) is imported by ``imagecorruptions`` only for
   ``resource_filename`` (to find its frost images). If it is missing, a tiny shim module is put
   into ``sys.modules`` for the duration of the import only.
   ``scipy.ndimage.interpolation`` (deprecated, gone in SciPy 2) is likewise aliased to
   ``scipy.ndimage`` during the import if it is missing, and its DeprecationWarning is silenced.
2. ``fog`` uses ``np.float_`` (removed in numpy 2): the module's ``np`` global is replaced by a
   proxy of numpy that adds ``float_ = float64``.
3. ``glass_blur`` / ``gaussian_blur`` call ``skimage.filters.gaussian(..., multichannel=True)``
   (removed in scikit-image 0.20): the module's ``gaussian`` global is replaced by a wrapper that
   translates it to the equivalent ``channel_axis=-1``.
4. ``impulse_noise`` uses ``skimage.util.random_noise``, which draws from its own unseeded
   generator: the module's ``sk`` global is replaced by a proxy whose ``util.random_noise``
   seeds that generator from the global ``np.random`` state, so it is deterministic.
5. ``glass_blur``'s per-pixel Python loop (0.3-0.8 s per 224x224 image) is replaced, in the
   dispatch table, by a vectorised equivalent that consumes the same random draws in the same
   order and reproduces the original bit-exactly (verified in ``test/test_corruptions.py``).
   Note that the original "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views is
   really the copy ``x[h, w] = x[h', w']``; the vectorised version reproduces that.

:func:`corrupt` seeds the legacy global ``np.random`` state (which ``imagecorruptions`` draws
from) with the given seed, under a lock, and restores the previous state afterwards.

Differences from the released ImageNet-C files:

- corruptions are computed on the fly on whatever image is passed (e.g. a resized 224x224 crop),
  not on the 256-resized + 224 center-cropped validation JPEGs;
- ``imagecorruptions`` itself differs from the original ImageNet-C script: it adapts some
  corruptions to arbitrary sizes (frost crop, fog map size, ...), replaces ImageMagick's (Wand)
  motion blur in ``motion_blur`` / ``snow`` by a numpy kernel, and its ``elastic_transform``
  has no random affine part;
- random draws come from our seeds, so individual images differ from the released ones; and
  ``impulse_noise`` follows patch 4, so it is not bit-identical even with the original seeding;
- the released files were re-encoded as JPEG (quality 85) after corruption; this is not done
  here. The float result is cast to uint8 by truncation, as in the ImageNet-C generation code.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
import types
import warnings
from typing import Any

import numpy as np

__all__ = [
    "ALL_NAMES",
    "CLEAN",
    "CORRUPTIONS",
    "SEVERITIES",
    "VALIDATION_CORRUPTIONS",
    "corrupt",
    "derive_seed",
]

CLEAN = "clean"
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
VALIDATION_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_NAMES: tuple[str, ...] = (CLEAN, *CORRUPTIONS, *VALIDATION_CORRUPTIONS)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_MIN_SIDE = 32  # imagecorruptions rejects smaller images
_SEED_LIMIT = 2**32  # np.random.seed accepts 0 .. 2**32 - 1

# --------------------------------------------------------------------------------------------
# Import imagecorruptions (patch 1)
# --------------------------------------------------------------------------------------------


def _shim_resource_filename(package_or_requirement: str, resource_name: str) -> str:
    """``pkg_resources.resource_filename`` for an importable, installed-as-files module."""
    module = sys.modules.get(package_or_requirement) or importlib.import_module(
        package_or_requirement
    )
    base = os.path.dirname(os.path.abspath(module.__file__ or ""))
    return os.path.normpath(os.path.join(base, resource_name))


def _import_imagecorruptions() -> tuple[types.ModuleType, types.ModuleType]:
    temporary: list[str] = []
    try:
        with warnings.catch_warnings():
            # setuptools 67-80 warn on import that pkg_resources is deprecated.
            warnings.simplefilter("ignore")
            import pkg_resources  # noqa: F401
    except ImportError:
        # setuptools >= 81 dropped pkg_resources; imagecorruptions only needs resource_filename.
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = _shim_resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
        temporary.append("pkg_resources")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import scipy.ndimage.interpolation
    except ImportError:
        # SciPy 2 removes the deprecated namespace; map_coordinates lives in scipy.ndimage.
        import scipy.ndimage

        sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
        temporary.append("scipy.ndimage.interpolation")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions
            import imagecorruptions.corruptions as ic_corruptions
    finally:
        # The shims were only needed while importing (the names are now bound in the module).
        for name in temporary:
            sys.modules.pop(name, None)
    return imagecorruptions, ic_corruptions


_ic, _icc = _import_imagecorruptions()

# --------------------------------------------------------------------------------------------
# Patches 2-5, scoped to imagecorruptions.corruptions' globals
# --------------------------------------------------------------------------------------------


class _ModuleOverlay(types.ModuleType):
    """Proxy of a module: the given overrides win, every other attribute is the module's."""

    def __init__(self, wrapped: types.ModuleType, **overrides: Any) -> None:
        super().__init__(wrapped.__name__)
        self.__dict__["_wrapped"] = wrapped
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_wrapped"], name)


_skimage_gaussian = _icc.gaussian
_skimage_random_noise = _icc.sk.util.random_noise


def _gaussian_compat(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any):
    """``skimage.filters.gaussian`` accepting the pre-0.20 ``multichannel`` keyword."""
    if multichannel is not None:
        kwargs.setdefault("channel_axis", -1 if multichannel else None)
    return _skimage_gaussian(image, *args, **kwargs)


def _seeded_random_noise(image: Any, mode: str = "gaussian", rng: Any = None, **kwargs: Any):
    """``skimage.util.random_noise`` whose default generator is seeded from ``np.random``."""
    if rng is None:
        rng = np.random.default_rng(int(np.random.randint(0, _SEED_LIMIT, dtype=np.uint64)))
    return _skimage_random_noise(image, mode=mode, rng=rng, **kwargs)


# Patch 2 (np.float_ in fog's plasma_fractal): numpy proxy only if numpy lacks the alias.
if not hasattr(np, "float_"):
    _icc.np = _ModuleOverlay(np, float_=np.float64)
# Patch 3 (multichannel= removed from skimage.filters.gaussian).
_icc.gaussian = _gaussian_compat
# Patch 4 (impulse_noise's unseeded generator).
_icc.sk = _ModuleOverlay(
    _icc.sk, util=_ModuleOverlay(_icc.sk.util, random_noise=_seeded_random_noise)
)

_GLASS_PARAMS = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]
_ORIGINAL_GLASS_BLUR = _icc.glass_blur  # kept for the bit-exactness test


def _glass_blur_fast(x: Any, severity: int = 1) -> np.ndarray:
    """Vectorised ``imagecorruptions.corruptions.glass_blur``, bit-exact with the original.

    The original visits (h, w) for h = H-d .. d+1 (outer) and w = W-d .. d+1 (inner), draws
    ``dx, dy = np.random.randint(-d, d, size=2)`` and does ``x[h, w] = x[h+dy, w+dx]`` (the
    intended swap degenerates to a copy on numpy views). One batched ``randint`` gives the same
    draws; the value copied at step k is the original pixel at ``src[k]`` unless that pixel was
    itself written at an earlier step j, in which case it is the value written at step j. Those
    chains are resolved by pointer doubling.
    """
    sigma, delta, iterations = _GLASS_PARAMS[severity - 1]
    gaussian = _icc.gaussian
    x = np.uint8(gaussian(np.array(x) / 255.0, sigma=sigma, multichannel=True) * 255)
    height, width = x.shape[:2]
    hh, ww = np.meshgrid(
        np.arange(height - delta, delta, -1), np.arange(width - delta, delta, -1), indexing="ij"
    )
    dst = (hh * width + ww).ravel()
    n = dst.size
    steps = np.arange(n)
    written_at = np.full(height * width, -1, dtype=np.int64)
    written_at[dst] = steps
    for _ in range(iterations):
        draws = np.random.randint(-delta, delta, size=(n, 2))  # same stream as n draws of size 2
        src = dst + draws[:, 1] * width + draws[:, 0]
        src_step = written_at[src]
        parent = np.where((src_step >= 0) & (src_step < steps), src_step, steps)
        while True:  # pointer doubling to the first step of each chain
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        flat = x.reshape(height * width, -1)
        out = flat.copy()
        out[dst] = flat[src[parent]]
        x = out.reshape(x.shape)
    return np.clip(gaussian(x / 255.0, sigma=sigma, multichannel=True), 0, 1) * 255


# Patch 5: dispatch glass_blur to the vectorised version (the original stays in the module).
_ic.corruption_dict["glass_blur"] = _glass_blur_fast
_ic.corruption_tuple = tuple(
    _glass_blur_fast if f is _ORIGINAL_GLASS_BLUR else f for f in _ic.corruption_tuple
)

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # imagecorruptions draws from the process-global np.random state


def derive_seed(base_seed: int, name: str, index: int) -> int:
    """Per-image seed in [0, 2**32) from (base seed, corruption name, image index).

    Stable across runs, processes and platforms (sha256, not Python's salted ``hash``). The
    severity is deliberately not an input: all severities of one image share their random draws.
    """
    digest = hashlib.sha256(f"{int(base_seed)}/{name}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _check(name: str, severity: int, seed: int) -> None:
    if name not in ALL_NAMES:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(ALL_NAMES)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or not (1 <= severity <= 5)
    ):
        raise ValueError(f"severity must be an int in {SEVERITIES}, got {severity!r}")
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not (0 <= seed < _SEED_LIMIT)
    ):
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.stack((image,) * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB or HxW gray image, got shape {image.shape}")
    if min(image.shape[:2]) < _MIN_SIDE:
        raise ValueError(f"image sides must be >= {_MIN_SIDE} pixels, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _normalise(out: Any, height: int, width: int) -> np.ndarray:
    """uint8 HxWx3 of exactly (height, width), whatever imagecorruptions returned."""
    out = np.asarray(out)
    if out.dtype != np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.stack((out,) * 3, axis=-1)
    out = out[:height, :width, :3]
    pad_h, pad_w = height - out.shape[0], width - out.shape[1]
    if pad_h or pad_w:
        out = np.pad(out, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(out)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to ``image``, deterministically.

    Args:
        image: uint8 RGB image, HxWx3 (HxW or HxWx1 gray is converted to RGB); sides >= 32.
        name: one of :data:`ALL_NAMES` (``"clean"`` returns an unmodified copy).
        severity: 1..5 (also required, and ignored, for ``"clean"``).
        seed: int in [0, 2**32); e.g. from :func:`derive_seed`.

    Returns:
        uint8 HxWx3 array with the input's height and width. The same arguments always give
        byte-identical output; the global ``np.random`` state is left unchanged.
    """
    _check(name, severity, seed)
    rgb = _as_rgb(image)
    if name == CLEAN:
        return rgb.copy()
    with _LOCK:
        saved = np.random.get_state()
        try:
            np.random.seed(int(seed))
            out = _ic.corrupt(rgb, severity=int(severity), corruption_name=name)
        finally:
            np.random.set_state(saved)
    return _normalise(out, rgb.shape[0], rgb.shape[1])
