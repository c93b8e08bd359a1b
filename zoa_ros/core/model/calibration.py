"""Build a :class:`ModelPack` from clean images: files, or any items with a reader (the frames
of a recording, the bundled sample photos)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from zoa_ros.core.files.images import read_rgb, spread
from zoa_ros.core.model.factory import ModelSpec, build_model, model_family, weights_fingerprint
from zoa_ros.core.model.features import FeatureExtractor, tap_names
from zoa_ros.core.model.labels import resolve_labels
from zoa_ros.core.model.norm_mode import batch_statistics
from zoa_ros.core.model.pack import ModelPack, library_versions
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.model.shift_reference import MIN_IMAGES, measure_reference
from zoa_ros.core.quant import QuantConfig, calibrate, quant_state, quantize_model


def build_pack(spec: ModelSpec, quant: QuantConfig, images: Sequence[Any], *,
               num_images: int = 32, num_stats_images: int = 1024, stats_batch_size: int = 64,
               labels_file: str | Path | None = None, progress: bool = True,
               read: Callable[[Any], np.ndarray] = read_rgb,
               source: dict | None = None) -> ModelPack:
    """Quantize ``spec`` with ranges calibrated on ``num_images`` of ``images`` and measure the
    source feature statistics and the shift gate's clean reference (:mod:`.shift_reference`;
    from 8 images on) on ``num_stats_images`` of them (both evenly spread over the list, in its
    order: an image folder sorted by class, as a camera sees related things together).
    ``images`` are image files, or anything ``read`` turns into a uint8 RGB (or grey) array;
    ``read`` is called in list order, once per pick and round. ``source`` (e.g. the recording
    and topic the frames came from) is recorded in the pack's calibration details.

    BatchNorm models measure the statistics with test-batch normalisation in chunks of
    ``stats_batch_size``, as ZOA's CNN variant normalises at test time.
    """
    if not images:
        raise ValueError("no calibration images")
    model = build_model(spec)
    pre = Preprocessor.for_model(model)
    family = model_family(model)
    labels = resolve_labels(model.num_classes, labels_file)

    calib_paths = spread(list(images), num_images)
    calib = pre([read(p) for p in tqdm(calib_paths, desc="calibration images",
                                       disable=not progress)])
    quantize_model(model, quant)
    if quant.enabled:
        calibrate(model, calib)

    stats_paths = spread(list(images), num_stats_images)
    mean, std, sizes = source_statistics(model, pre, stats_paths, stats_batch_size, progress,
                                         read)
    reference = None
    if len(stats_paths) >= MIN_IMAGES:
        reference = measure_reference(model, stats_paths,
                                      lambda chunk: pre([read(p) for p in chunk]))
    return ModelPack(
        spec=spec, quant=quant, weights_sha256=weights_fingerprint(spec), labels=labels,
        data_config=pre.data_config, family=family, tap_names=tap_names(model),
        tap_sizes=sizes, quant_state=quant_state(model), source_mean=mean, source_std=std,
        calibration={"num_images": len(calib_paths), "num_stats_images": len(stats_paths),
                     "stats_batch_size": stats_batch_size,
                     "stats_norm": "batch" if family == "batchnorm" else "layer",
                     "images_sha256": _paths_digest(calib_paths),
                     "stats_images_sha256": _paths_digest(stats_paths),
                     "shift_reference": None if reference is None else reference.describe(),
                     **({"source": source} if source else {})},
        versions=library_versions(),
        shift_reference=reference,
    )


@torch.no_grad()
def source_statistics(model: torch.nn.Module, pre: Preprocessor, paths: Sequence[Any],
                      batch_size: int, progress: bool = True,
                      read: Callable[[Any], np.ndarray] = read_rgb
                      ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-dimension mean and unbiased std of the concatenated feature taps over ``paths``
    (each read with ``read``)."""
    if len(paths) < 2:
        raise ValueError("source statistics need at least 2 images")
    extract = FeatureExtractor(model)
    norm = batch_statistics(model) if model_family(model) == "batchnorm" else \
        contextlib.nullcontext()
    rows: list[torch.Tensor] = []
    sizes: list[int] = []
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2] = [*chunks[-2], *chunks.pop()]
    with norm:
        for chunk in tqdm(chunks, desc="source statistics", disable=not progress):
            feats = extract(pre([read(p) for p in chunk])).all()
            sizes = [f.shape[1] for f in feats]
            rows.append(torch.cat(feats, dim=1))
    table = torch.cat(rows)
    return table.mean(dim=0), table.std(dim=0, unbiased=True), sizes


def _paths_digest(paths: Sequence[Any]) -> str:
    """sha256 of the items' names (a file's name, else the item as text)."""
    return hashlib.sha256("\n".join(getattr(p, "name", None) or str(p) for p in paths)
                          .encode()).hexdigest()
