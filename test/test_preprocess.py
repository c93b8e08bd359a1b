"""Preprocessing: the uint8 tensor path against timm's PIL transform it replaces."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from zoa_ros.core.files.sample_photos import PHOTOS, load_photo
from zoa_ros.core.model.preprocess import Preprocessor, resized_size, to_pil

LITE0 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
         "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}


def reference(pre: Preprocessor, image: np.ndarray) -> np.ndarray:
    """timm's eval transform through PIL, as uint8 HxWx3."""
    tensor = pre.geometry(to_pil(image))
    return (tensor.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def test_pil_crop_is_timms_transform() -> None:
    pre = Preprocessor(LITE0)
    frame = frames((640, 480))[1]
    assert np.array_equal(pre.pil_crop(frame).permute(1, 2, 0).numpy(), reference(pre, frame))


def frames(size: tuple[int, int]) -> list[np.ndarray]:
    return [cv2.resize(load_photo(n), size, interpolation=cv2.INTER_AREA) for n in PHOTOS[:4]]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1280, 720), (300, 260)])
def test_downscaled_frames_match_pil_within_one_level(interpolation, size) -> None:
    pre = Preprocessor({**LITE0, "interpolation": interpolation})
    assert pre.fast
    for frame in frames(size):
        ours, theirs = pre.crop(frame), reference(pre, frame)
        assert ours.shape == theirs.shape == (224, 224, 3)
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.02


@pytest.mark.parametrize("mode", ["center", "squash"])
def test_upscaled_and_odd_frames_stay_close_to_pil(mode) -> None:
    pre = Preprocessor({**LITE0, "crop_mode": mode, "crop_pct": 0.95})
    for size in [(160, 120), (224, 224), (64, 300)]:
        for frame in frames(size):
            diff = np.abs(pre.crop(frame).astype(int) - reference(pre, frame).astype(int))
            assert diff.mean() < 0.2 and (diff > 3).mean() < 0.01, size


def test_resized_size_follows_torchvision() -> None:
    assert resized_size((480, 640), 256, None) == (256, 341)
    assert resized_size((640, 480), 256, None) == (341, 256)
    assert resized_size((480, 640), (256,), None) == (256, 341)
    assert resized_size((480, 640), (200, 300), None) == (200, 300)
    assert resized_size((100, 1000), 256, 1200) == (120, 1200)


def test_geometries_without_a_tensor_path_use_timm_as_is() -> None:
    pre = Preprocessor({**LITE0, "crop_mode": "border"})
    assert not pre.fast
    frame = frames((640, 480))[0]
    assert np.array_equal(pre.crop(frame), reference(pre, frame))


def test_grey_rgba_pil_and_read_only_frames() -> None:
    pre = Preprocessor(LITE0)
    rgb = frames((320, 240))[0]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    message_bytes = np.frombuffer(rgb.tobytes(), np.uint8).reshape(rgb.shape)  # not writable
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # e.g. torch's warning about non-writable arrays
        batch = pre([rgb, rgba, Image.fromarray(rgb), message_bytes, grey])
    assert batch.shape == (5, 3, 224, 224) and batch.dtype == torch.float32
    for i in (1, 2, 3):
        assert torch.equal(batch[i], batch[0])
    assert torch.equal(batch[4][0], batch[4][1])   # grey: three equal channels
    expected = (torch.from_numpy(pre.crop(rgb)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.allclose(batch[0], expected, atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((4, 4, 2), np.uint8)])
def test_bad_frames_are_refused_with_a_reason(bad) -> None:
    with pytest.raises(ValueError, match=r"expected|empty"):
        Preprocessor(LITE0).crop(bad)


def test_bench_preprocess_prints_and_writes_both_paths(tmp_path, capsys) -> None:
    from zoa_ros.tools.cli import main

    out = tmp_path / "pre.json"
    assert main(["bench", "preprocess", "--sizes", "640x480,96x64", "--runs", "4",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["size"] for r in rows] == ["640x480", "96x64"]
    assert rows[0]["max_abs_diff"] <= 1 and all(r["tensor_p50_ms"] > 0 for r in rows)
    assert "speed-up" in capsys.readouterr().out
