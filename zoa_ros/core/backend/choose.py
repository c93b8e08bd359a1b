"""Which backend classifies: the torch reference (the simulation) or the int8 runtime.

``torch``: the method's own forward on the fake-quantized model, always available.
``onnxruntime``: the int8 export (:mod:`.export`) on ONNX Runtime (:mod:`.ort`), for streaming
predictions of ``none``, ``norm`` and ``zoa`` (their predictions are the model's forward with
one normalization per BatchNorm and ZOA's activation shift, which the export folds in); refused
with the reason otherwise. ``auto``: the int8 runtime where that works, else the torch
reference with a warning that says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.backend.base import Backend, BackendError
from zoa_ros.core.backend.reference import prediction_norms
from zoa_ros.core.model.pack import ModelPack

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
# Methods whose streaming prediction the int8 export can represent.
INT8_METHODS = ("none", "norm", "zoa")


@dataclass(frozen=True)
class Choice:
    """The chosen backend (``None``: the torch reference), its name, and why ``auto`` fell
    back to torch (``None`` when it did not)."""

    backend: Backend | None
    name: str
    warning: str | None = None


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"inference backend must be one of {BACKENDS}, not {name!r}")
    return name


def choose_backend(requested: str, pack: ModelPack, model: nn.Module, method: AdaptMethod,
                   mode: str, int8_model: str | None = None, threads: int = 1) -> Choice:
    """The backend for an engine of ``pack`` whose ``method`` runs on ``model``.

    ``int8_model``: an export file (``zoa-ros export``), refused unless made from ``pack``;
    ``None`` exports the pack now (a few seconds). ``requested == "onnxruntime"`` raises a
    ``ValueError`` (``BackendError``, ``ExportError``, ``ExportMismatch``) with the reason."""
    check_backend_name(requested)
    if requested == "torch":
        return Choice(None, "torch")
    if requested == "auto" and method.observes_frame_by_frame:
        # On the int8 runtime such a method sees the frames only through replays on the
        # adaptation thread, late: in the demo ZOA's shift gate closed 18-35 points of clean
        # agreement too late after a shift (docs/lab/int8.md §8.5). A choice, not a fault.
        log.info("inference backend auto: method %r watches every frame (ZOA's shift gate); "
                 "classifying with the torch simulation (inference.backend: onnxruntime "
                 "runs the int8 model anyway)", method.name)
        return Choice(None, "torch")
    try:
        _check_supported(pack, model, method, mode)
        try:   # onnx and onnxruntime are needed from here on only
            from zoa_ros.core.backend.export import Int8Export, export_pack
            from zoa_ros.core.backend.ort import OrtBackend
        except ImportError as e:
            raise BackendError(f"the int8 runtime needs onnx and onnxruntime ({e})") from e
        if int8_model:
            export = Int8Export.load(int8_model)
            export.check_pack(pack, int8_model)
        else:
            export = export_pack(pack)
        backend = OrtBackend(export, model, threads=threads)
    except (ValueError, OSError) as e:   # BackendError, ExportError, ExportMismatch
        if requested == "onnxruntime":
            raise
        warning = f"inference backend auto: the int8 runtime is not used ({e}); " \
                  "classifying with the torch simulation"
        log.warning(warning)
        return Choice(None, "torch", warning)
    return Choice(backend, "onnxruntime")


def _check_supported(pack: ModelPack, model: nn.Module, method: AdaptMethod, mode: str) -> None:
    if mode != "streaming":
        raise BackendError("batch mode predicts with the statistics of each batch on the torch "
                           "reference (the paper's protocol); the int8 runtime serves streaming "
                           "mode")
    if method.name not in INT8_METHODS:
        raise BackendError(f"method {method.name!r} changes more than the BatchNorms and the "
                           f"activation shift at test time; the int8 runtime serves "
                           f"{', '.join(INT8_METHODS)}")
    if pack.family != "batchnorm":
        raise BackendError(f"{pack.spec.name} has no BatchNorm to fold (a {pack.family} "
                           "model); the int8 export covers BatchNorm CNNs")
    try:
        prediction_norms(model, method)
    except ValueError as e:
        raise BackendError(f"method {method.name!r}: {e}") from e
