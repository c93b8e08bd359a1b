"""Tests for zoa_ros.core.data.corruptions (ImageNet-C corruptions via imagecorruptions)."""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest
import skimage.data
import skimage.filters
import skimage.util
from PIL import Image

from zoa_ros.core.data import corruptions as C


def _chelsea(height: int = 224, width: int = 224) -> np.ndarray:
    """Real photo (scikit-image's cat), center region resized to (height, width)."""
    img = skimage.data.chelsea()  # 300x451x3 uint8
    return np.asarray(Image.fromarray(img[:, 60:360]).resize((width, height), Image.BILINEAR))


def _synthetic(height: int = 48, width: int = 64) -> np.ndarray:
    """Fixed synthetic RGB image (gradients + checkerboard), independent of any data files."""
    yy, xx = np.mgrid[0:height, 0:width]
    r = (xx * 255 // (width - 1)).astype(np.uint8)
    g = (yy * 255 // (height - 1)).astype(np.uint8)
    b = np.where((yy // 8 + xx // 8) % 2 == 0, 200, 40).astype(np.uint8)
    return np.stack([r, g, b], axis=-1)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


IMG = _chelsea()
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def test_name_lists() -> None:
    assert C.CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
        "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
        "elastic_transform", "pixelate", "jpeg_compression",
    )  # fmt: skip
    assert C.VALIDATION_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert set(C.ALL_NAMES) == {"clean", *C.CORRUPTIONS, *C.VALIDATION_CORRUPTIONS}
    assert len(C.ALL_NAMES) == 20


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("name", C.ALL_NAMES)
def test_every_corruption_runs(name: str, severity: int) -> None:
    out = C.corrupt(IMG, name, severity, seed=3)
    assert out.dtype == np.uint8
    assert out.shape == IMG.shape
    assert out.flags.c_contiguous
    if name == "clean":
        assert np.array_equal(out, IMG)
        assert out is not IMG
    else:
        assert not np.array_equal(out, IMG), name


@pytest.mark.parametrize("shape", [(96, 160), (161, 67), (32, 32)])
def test_non_square_shapes(shape: tuple[int, int]) -> None:
    img = _chelsea(*shape)
    for name in C.ALL_NAMES:
        out = C.corrupt(img, name, 5, seed=11)
        assert out.dtype == np.uint8 and out.shape == img.shape, name


def test_grayscale_input_becomes_rgb() -> None:
    gray = IMG[:, :, 1].copy()
    rgb = np.stack([gray] * 3, axis=-1)
    for name in ("fog", "glass_blur", "frost"):
        out = C.corrupt(gray, name, 3, seed=5)
        assert out.shape == rgb.shape
        assert np.array_equal(out, C.corrupt(rgb, name, 3, seed=5))
        assert np.array_equal(C.corrupt(gray[:, :, None], name, 3, seed=5), out)


def test_input_not_modified() -> None:
    img = IMG.copy()
    for name in C.ALL_NAMES:
        C.corrupt(img, name, 5, seed=1)
    assert np.array_equal(img, IMG)


@pytest.mark.parametrize("name", C.ALL_NAMES)
def test_deterministic(name: str) -> None:
    a = C.corrupt(IMG, name, 3, seed=1234)
    np.random.seed(999)  # the caller's global state must not matter
    np.random.random(17)
    b = C.corrupt(IMG, name, 3, seed=1234)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "name", [*NOISE, "glass_blur", "snow", "frost", "fog", "elastic_transform", "spatter"]
)
def test_seed_changes_random_corruptions(name: str) -> None:
    a = C.corrupt(IMG, name, 3, seed=1)
    b = C.corrupt(IMG, name, 3, seed=2)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "name",
    ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "fog", "brightness",
     "contrast", "pixelate", "gaussian_blur"],
)  # fmt: skip
def test_severity_increases_distortion(name: str) -> None:
    mads = [_mad(C.corrupt(IMG, name, s, seed=7), IMG) for s in (1, 3, 5)]
    assert mads[0] < mads[1] < mads[2], (name, mads)


def test_global_random_state_untouched() -> None:
    np.random.seed(42)
    before = np.random.get_state()
    for name in C.ALL_NAMES:
        C.corrupt(IMG, name, 2, seed=8)
    after = np.random.get_state()
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]


def test_thread_safe() -> None:
    names = ("gaussian_noise", "impulse_noise", "glass_blur", "snow", "fog", "frost")
    expected = {n: C.corrupt(IMG, n, 4, seed=21) for n in names}
    results: dict[tuple[str, int], np.ndarray] = {}

    def work(name: str, k: int) -> None:
        results[(name, k)] = C.corrupt(IMG, name, 4, seed=21)

    threads = [threading.Thread(target=work, args=(n, k)) for n in names for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (name, _), out in results.items():
        assert np.array_equal(out, expected[name]), name


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_fast_glass_blur_is_bit_exact(severity: int) -> None:
    """The vectorised glass_blur reproduces imagecorruptions' per-pixel loop exactly."""
    for shape in [(40, 48), (33, 57)]:
        img = np.random.RandomState(severity).randint(0, 256, size=(*shape, 3)).astype(np.uint8)
        state = np.random.get_state()
        try:
            np.random.seed(77)
            ref = C._ORIGINAL_GLASS_BLUR(Image.fromarray(img), severity)
            ref_tail = np.random.random()
            np.random.seed(77)
            fast = C._glass_blur_fast(Image.fromarray(img), severity)
            fast_tail = np.random.random()  # same number of draws consumed
        finally:
            np.random.set_state(state)
        assert fast.dtype == ref.dtype
        assert np.array_equal(fast, ref), (severity, shape)
        assert ref_tail == fast_tail


def test_frost_images_found() -> None:
    """pkg_resources (or our shim) resolves imagecorruptions' bundled frost images."""
    for name in ("frost1.png", "frost6.jpg"):
        assert os.path.isfile(C._icc.resource_filename(C._icc.__name__, f"./frost/{name}"))


def test_patches_are_scoped() -> None:
    """The compatibility patches touch imagecorruptions only, not numpy / scikit-image."""
    if int(np.__version__.split(".")[0]) >= 2:
        assert not hasattr(np, "float_")
    assert skimage.util.random_noise is C._skimage_random_noise
    assert skimage.filters.gaussian is C._skimage_gaussian
    assert C._ic.corruption_dict["glass_blur"] is C._glass_blur_fast


# sha256 of corrupt(_synthetic(), name, 3, seed=2024).tobytes(), computed once with this module
# (imagecorruptions 1.1.2, numpy 2.2.6, scikit-image 0.26, scipy 1.17, opencv 4.14). A change
# means the library, a patch or a dependency changed the corruption: review, then re-pin.
PINNED = {
    "gaussian_noise": "9ce5b6e168e4d96797382378c696962c4cbfbde5e86e8589344ac1da8221f1c3",
    "impulse_noise": "85b0095a67449f5fc5bcaa2182656ab31bad8c7d8b70f488312fe4fbdc550d8e",
    "glass_blur": "0d659378a607880ae43cb27472893f5139c3768fff2bc2b74d30f61f9cbf5c06",
    "fog": "4c71d56b5ebfbab5eefc028c4076492fd07ccf7031a287c0acc5ee78da54af2c",
    "frost": "74c1a5fb09ed855ff916cffbd7c37f22132bedf9d079f1888b9a979a3cb133e2",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_output(name: str) -> None:
    out = C.corrupt(_synthetic(), name, 3, seed=2024)
    assert hashlib.sha256(out.tobytes()).hexdigest() == PINNED[name]


def test_derive_seed() -> None:
    s = C.derive_seed(0, "fog", 0)
    assert s == C.derive_seed(0, "fog", 0)
    assert 0 <= s < 2**32
    assert s == 3917288609  # pinned: stable across runs and processes
    seeds = {C.derive_seed(b, n, i) for b in (0, 1) for n in C.CORRUPTIONS for i in range(20)}
    assert len(seeds) == 2 * 15 * 20
    assert C.corrupt(IMG, "fog", 2, C.derive_seed(5, "fog", 3)).shape == IMG.shape


@pytest.mark.parametrize("name", ["", "Fog", "gaussian", "imagenet_c", "none"])
def test_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match=r"gaussian_noise.*jpeg_compression"):
        C.corrupt(IMG, name, 1, seed=0)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3", None])
def test_bad_severity(severity: object) -> None:
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(IMG, "fog", severity, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(IMG, "clean", severity, seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        C.corrupt(IMG, "fog", 1, seed=seed)  # type: ignore[arg-type]


def test_bad_images() -> None:
    with pytest.raises(TypeError):
        C.corrupt(IMG.astype(np.float32), "fog", 1, seed=0)
    with pytest.raises(ValueError, match="shape"):
        C.corrupt(np.zeros((64, 64, 4), np.uint8), "fog", 1, seed=0)
    with pytest.raises(ValueError, match=">= 32"):
        C.corrupt(np.zeros((31, 64, 3), np.uint8), "fog", 1, seed=0)
