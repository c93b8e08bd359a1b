"""Shared fixtures: real bundled photos and tiny real timm models calibrated into packs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoa_ros.core.calibration import build_pack
from zoa_ros.core.images import find_images
from zoa_ros.core.models import ModelSpec
from zoa_ros.core.pack import ModelPack
from zoa_ros.core.quant import QuantConfig
from zoa_ros.core.sample_photos import PHOTOS, load_photo

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 real photos: the 8 bundled scikit-image photos and two fixed crops of each."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        image = load_photo(name)
        Image.fromarray(image).save(folder / f"{name}.png")
        h, w = image.shape[:2]
        for k in range(2):
            size = int(min(h, w) * 0.6)
            top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            crop = image[top:top + size, left:left + size]
            Image.fromarray(crop).save(folder / f"{name}_crop{k}.jpg", quality=92)
    return folder


@pytest.fixture(scope="session")
def make_pack(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``make_pack(model, quant) -> (ModelPack, path)``, cached for the session."""
    cache: dict[tuple[str, str], tuple[ModelPack, Path]] = {}
    folder = tmp_path_factory.mktemp("packs")

    def make(model: str = "test_resnet", quant: str = "w8a8") -> tuple[ModelPack, Path]:
        key = (model, quant)
        if key not in cache:
            pack = build_pack(ModelSpec(model), QuantConfig.parse(quant),
                              find_images(photo_dir), num_images=8, progress=False)
            path = folder / f"{model}_{quant}.zoapack"
            pack.save(path)
            cache[key] = (pack, path)
        return cache[key]

    return make


# ---- engine / evaluate: stand-in adaptation methods --------------------------------------------
# Real AdaptMethod implementations (they run the model) used to test the engine's mechanics
# independently of the registry's methods: counting, buffering, threading, determinism.

import threading as _threading  # noqa: E402
import time as _time  # noqa: E402

from zoa_ros.core.adapt.base import AdaptMethod  # noqa: E402


class StandInNone(AdaptMethod):
    """Runs the model; adapting changes nothing (but is counted). ``delay_s`` slows adapt()."""

    name = "none"

    def __init__(self, model, pack, config, generator) -> None:
        super().__init__(model, pack, config, generator)
        self.delay_s = float(config.get("delay_s", 0.0))
        self.adapted: list[torch.Tensor] = []   # every batch adapt() saw
        self.resets = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        self.costs.forward_passes += 1
        self.costs.frames_predicted += len(x)
        return logits

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.predict(x)
        self.adapt(x)
        return logits

    def adapt(self, x: torch.Tensor) -> None:
        self.adapted.append(x)
        if self.delay_s:
            _time.sleep(self.delay_s)
        self.costs.adapt_steps += 1
        self.costs.frames_adapted += len(x)

    def reset(self) -> None:
        self.resets += 1


class StandInShift(StandInNone):
    """A crude real adaptation: an output shift moved by a one-sided SPSA step on the mean
    entropy (perturbation from the generator), published with one tensor swap. It declares a
    new domain every second step and keeps one bank entry per domain."""

    name = "shift"

    def __init__(self, model, pack, config, generator) -> None:
        super().__init__(model, pack, config, generator)
        self.shift = torch.zeros(len(pack.labels))
        self.lr = float(config.get("lr", 0.5))
        self.domain_changes = 0
        self.domain_id = 0
        self._swap = _threading.Lock()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return super().predict(x) + self.shift

    def adapt(self, x: torch.Tensor) -> None:
        logits = self.predict(x)
        z = torch.randn(self.shift.shape, generator=self.generator)
        loss0, loss1 = _entropy(logits), _entropy(logits + 0.1 * z)
        new = self.shift - self.lr * (loss1 - loss0) / (0.1 * z)
        with self._swap:
            self.shift = new.clamp(-5, 5)
        super().adapt(x)
        if self.costs.adapt_steps % 2 == 0:
            self.domain_changes += 1
            self.domain_id = self.domain_changes

    def reset(self) -> None:
        super().reset()
        self.shift = torch.zeros_like(self.shift)

    def bank_summary(self) -> dict:
        return {"entries": self.domain_changes, "bytes": 4 * self.shift.numel()
                * self.domain_changes}


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(dim=-1)
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()


STAND_INS = {"none": StandInNone, "shift": StandInShift}


def stand_in_factory(name, model, pack, config, generator) -> AdaptMethod:
    if name not in STAND_INS:
        raise KeyError(f"no stand-in method {name!r}")
    return STAND_INS[name](model, pack, config, generator)


@pytest.fixture
def stand_in_methods():
    """The factory signature of ``registry.create``, serving the stand-ins above."""
    return stand_in_factory
