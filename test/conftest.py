"""Shared fixtures: real bundled photos and tiny real timm models calibrated into packs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoa_ros.core.files.images import find_images
from zoa_ros.core.files.sample_photos import PHOTOS, load_photo
from zoa_ros.core.model.calibration import build_pack
from zoa_ros.core.model.factory import ModelSpec
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.quant import QuantConfig

# One intra-op thread for the whole test process: the tests run many small forwards, which are
# fastest that way, and on a shared CPU spinning OpenMP threads wait on each other (a 2-thread
# test process beside other jobs once took 900 s for a test that takes seconds alone). Tests
# that need more threads set them and put this default back.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def zoa_ros_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session (``ZOA_ROS_CACHE``, inherited by every node and CLI
    process the tests start): the default model pack is built at most once, and never into
    the user's ``~/.ros``."""
    folder = tmp_path_factory.mktemp("zoa_ros_cache")
    os.environ["ZOA_ROS_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def shared_memory_cleanup() -> Iterator[None]:
    """After the session, Fast DDS's own ``fastdds shm clean`` (its ``Clean`` class: the CLI
    around it also needs psutil): the nodes the tests kill leave their shared-memory segments
    in /dev/shm (17 MB each, in RAM), which nothing else removes. It removes only segments and
    ports that no live process holds."""
    yield
    tool = Path(sys.prefix) / "tools" / "fastdds" / "shm" / "clean.py"
    spec = importlib.util.spec_from_file_location("fastdds_shm_clean", tool)
    if spec is None or spec.loader is None or not tool.is_file():
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with contextlib.redirect_stdout(io.StringIO()):
        module.Clean().run(force=False)


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
        self.cached: list[object] = []          # and the records it was given
        self.resets = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        self.costs.forward_passes += 1
        self.costs.frames_predicted += len(x)
        return logits

    def predict_with_record(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        return self.predict(x), ("record", len(x))

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.predict(x)
        self.adapt(x)
        return logits

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> None:
        self.adapted.append(x)
        self.cached.append(cached)
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
        self._changes = 0
        self._swap = _threading.Lock()

    @property
    def domain_changes(self) -> int:
        return self._changes

    @property
    def domain_id(self) -> int:
        return self._changes

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return super().predict(x) + self.shift

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> None:
        logits = self.predict(x)
        z = torch.randn(self.shift.shape, generator=self.generator)
        loss0, loss1 = _entropy(logits), _entropy(logits + 0.1 * z)
        new = self.shift - self.lr * (loss1 - loss0) / (0.1 * z)
        with self._swap:
            self.shift = new.clamp(-5, 5)
        super().adapt(x, cached)
        if self.costs.adapt_steps % 2 == 0:
            self._changes += 1

    def reset(self) -> None:
        super().reset()
        self.shift = torch.zeros_like(self.shift)

    def bank_summary(self) -> dict:
        return {"entries": self._changes, "bytes": 4 * self.shift.numel() * self._changes}


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


# ---- ZOA method tests: packs of tiny models with non-degenerate norm layers ------------------
# timm's random init zero-initialises the last BN of every residual block (the adapted layers
# then have no effect on the output), so the ZOA tests use checkpoints whose norm affines are
# randomised. Calibration searches 11 instead of 101 clipping ratios: the tests check ZOA's
# mathematics, not quantization quality, and the full search costs ~20 s per model here.


@pytest.fixture(scope="session")
def zoa_pack(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``zoa_pack(model, quant="w8a8") -> ModelPack`` (cached for the session)."""
    from safetensors.torch import save_file

    import zoa_ros.core.quant.fake_quant as fake_quant
    from zoa_ros.core.model.factory import build_model

    cache: dict[tuple[str, str], ModelPack] = {}
    folder = tmp_path_factory.mktemp("zoa_packs")

    def make(model: str = "test_vit", quant: str = "w8a8") -> ModelPack:
        if (model, quant) not in cache:
            net = build_model(ModelSpec(model, seed=1))
            gen = torch.Generator().manual_seed(2)
            with torch.no_grad():
                for m in net.modules():
                    if isinstance(m, torch.nn.LayerNorm | torch.nn.BatchNorm2d):
                        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            weights = folder / f"{model}.safetensors"
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(fake_quant, "SEARCH_RATIOS", torch.linspace(0.01, 1.2, 11))
                cache[(model, quant)] = build_pack(
                    ModelSpec(model, weights=str(weights)), QuantConfig.parse(quant),
                    find_images(photo_dir), num_images=4, num_stats_images=16,
                    stats_batch_size=16, progress=False)
        return cache[(model, quant)]

    return make


@pytest.fixture(scope="session")
def zoa_images(photo_dir: Path):
    """``zoa_images(pack, n, seed=0, size=None) -> tensor``: ``n`` random crops of the photos,
    preprocessed for ``pack`` (at ``size`` x ``size`` instead of the model's input if given)."""
    from zoa_ros.core.files.images import read_rgb
    from zoa_ros.core.model.preprocess import Preprocessor

    photos = [read_rgb(p) for p in find_images(photo_dir)]

    def make(pack: ModelPack, n: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
        data_config = dict(pack.data_config)
        if size is not None:
            data_config["input_size"] = (3, size, size)
        pre = Preprocessor(data_config)
        rng = np.random.default_rng(seed)
        crops = []
        for _ in range(n):
            image = photos[rng.integers(len(photos))]
            h, w = image.shape[:2]
            side = int(min(h, w) * rng.uniform(0.4, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crops.append(image[top:top + side, left:left + side])
        return pre(crops)

    return make


# ---- baseline method tests (norm, t3a, tent, foa) --------------------------------------------


@pytest.fixture(scope="session")
def shifted_batches(zoa_images):
    """``shifted_batches(pack, n, batch=16, seed=0, size=None, noise=0.5) -> [tensor]``: ``n``
    batches of photo crops with seeded Gaussian noise (a toy domain shift), in input space."""

    cache: dict[tuple, list[torch.Tensor]] = {}

    def make(pack: ModelPack, n: int, batch: int = 16, seed: int = 0, size: int | None = None,
             noise: float = 0.5) -> list[torch.Tensor]:
        key = (pack.spec.name, tuple(pack.data_config.get("input_size", ())), n, batch, seed,
               size, noise)
        if key not in cache:
            gen = torch.Generator().manual_seed(1000 + seed)
            out = []
            for i in range(n):
                x = zoa_images(pack, batch, seed=100 * seed + i, size=size)
                out.append(x + noise * torch.randn(x.shape, generator=gen))
            cache[key] = out
        return [x.clone() for x in cache[key]]

    return make


class StemCounter:
    """Counts full forward passes: calls of the model's stem conv / patch embedding."""

    def __init__(self, model: torch.nn.Module) -> None:
        from zoa_ros.core.quant.model import first_conv_name
        self.calls = 0
        stem = model.get_submodule(first_conv_name(model))
        self._handle = stem.register_forward_hook(self._hit)

    def _hit(self, *_: object) -> None:
        self.calls += 1

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


@pytest.fixture
def stem_counter():
    """``stem_counter(model) -> StemCounter`` (``take()`` returns and clears the count)."""
    return StemCounter


def rewritten_bank(data: bytes, drop: tuple[str, ...] = (), **changes: object) -> bytes:
    """A bank file's bytes with metadata fields changed (``drop``: removed) and a *valid*
    content hash, i.e. what a newer or foreign writer could produce."""
    import json

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from zoa_ros.core.bank import file as bank_file

    tensors = st_load(data)
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8:8 + size])["__metadata__"]["zoa_bank"])
    meta.pop("content_sha256")
    meta.update(changes)
    for key in drop:
        meta.pop(key, None)
    meta["content_sha256"] = bank_file.content_hash(meta, tensors)
    return st_save(tensors, metadata={"zoa_bank": json.dumps(meta)})


@pytest.fixture(scope="module")
def saved_vit_pack(zoa_pack, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The tiny ViT pack (non-degenerate norm layers, predictions that vary from frame to
    frame, quick calibration) and a file holding it: ``(pack, path)``."""
    pack = zoa_pack("test_vit")
    path = tmp_path_factory.mktemp("pack") / "vit.zoapack"
    pack.save(path)
    return pack, path


@pytest.fixture(scope="module")
def predicted_csv(photo_dir: Path, saved_vit_pack: tuple,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """labels.csv whose labels are the tiny ViT's unadapted predictions on the clean photos, so
    accuracy is 100 % on clean frames and lower on corrupted ones (not a trivial 0 %)."""
    from zoa_ros.core.engine import Engine, EngineConfig
    from zoa_ros.core.files.images import read_rgb

    engine = Engine(saved_vit_pack[0], EngineConfig(method="none", top_k=1))
    paths = find_images(photo_dir)
    predicted = [p.class_index for p in engine.predict([read_rgb(p) for p in paths])]
    engine.close()
    path = tmp_path_factory.mktemp("predicted") / "labels.csv"
    path.write_text("path,class_index\n" + "".join(
        f"{p.relative_to(photo_dir)},{c}\n" for p, c in zip(paths, predicted)))
    return path


# Result fields that measure time or memory, or name output files: they differ between runs.
TIMING = {"ms_per_frame", "peak_mb", "wall_s", "stream_s", "frames_per_s", "peak_rss_mb",
          "last_step_ms", "mean_step_ms", "mean_predict_ms", "timed_frames", "json", "report",
          "adapt_paused_s"}


def without_timing(value):
    """An evaluate/replay result without the fields that differ between identical runs."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@dataclass
class BackgroundSteps:
    """Adaptation steps running on another thread (:func:`steps_in_background`)."""

    thread: threading.Thread
    started: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    errors: list[Exception] = field(default_factory=list)


@pytest.fixture
def steps_in_background():
    """``steps_in_background(engine, forced=3, due_first=False) -> BackgroundSteps``: on a new
    thread, one due step first if asked (it must run), then ``forced`` forced ones; ``started``
    is set before the first, ``finished`` after the last; exceptions land in ``errors``."""

    def start(eng, forced: int = 3, due_first: bool = False) -> BackgroundSteps:
        def adapter() -> None:
            try:
                steps.started.set()
                if due_first:
                    assert eng.maybe_adapt() is not None
                for _ in range(forced):
                    eng.maybe_adapt(force=True)
            except Exception as e:  # pragma: no cover - reported by the test
                steps.errors.append(e)
            finally:
                steps.finished.set()

        steps = BackgroundSteps(threading.Thread(target=adapter))
        steps.thread.start()
        return steps

    return start
