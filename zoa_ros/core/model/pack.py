"""The model pack: everything needed to rebuild the quantized model and run ZOA, in one file.

A pack is a safetensors file (never pickle) holding the quantizer state, the source feature
statistics and the shift gate's clean reference (:mod:`.shift_reference`) as tensors, with a
JSON document in the safetensors metadata: model spec, weights sha256, quantization config,
labels, preprocessing, tap layout, calibration details, library versions and a content hash
over all of it. Loading verifies the hash, so a truncated or tampered file is refused with a
message that says what is wrong.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from zoa_ros.core.files.atomic import atomic_write_bytes
from zoa_ros.core.files.tensor_file import content_hash, read_metadata
from zoa_ros.core.model.factory import ModelSpec, build_model, weights_fingerprint
from zoa_ros.core.model.shift_reference import ShiftReference
from zoa_ros.core.quant import QuantConfig, quantize_model

FORMAT = "zoa_ros.pack"
FORMAT_VERSION = 1
_META_KEY = "zoa_pack"
_QUANT = "quant."
_STATS = ("source_mean", "source_std")


class PackError(ValueError):
    """A pack file that cannot be used, with the reason."""


@dataclass
class ModelPack:
    spec: ModelSpec
    quant: QuantConfig
    weights_sha256: str
    labels: list[str]
    data_config: dict
    family: str
    tap_names: list[str]
    tap_sizes: list[int]
    quant_state: dict[str, torch.Tensor]
    source_mean: torch.Tensor
    source_std: torch.Tensor
    calibration: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    # What clean input looks like (the no-harm shift gate); None in packs made before it.
    shift_reference: ShiftReference | None = None

    def __post_init__(self) -> None:
        # Keep the JSON-borne fields in their JSON form so a loaded pack compares equal.
        for name in ("data_config", "calibration", "versions", "tap_names", "tap_sizes"):
            setattr(self, name, json.loads(json.dumps(getattr(self, name))))

    # ---- identity -------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"name": self.spec.name, "weights": self.spec.weights,
                      "num_classes": self.spec.num_classes, "seed": self.spec.seed},
            "weights_sha256": self.weights_sha256,
            "quant": self.quant.to_dict(),
            "labels": self.labels,
            "data_config": self.data_config,
            "family": self.family,
            "tap_names": self.tap_names,
            "tap_sizes": self.tap_sizes,
            "calibration": self.calibration,
            "versions": self.versions,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{_QUANT}{k}": v.detach().cpu().contiguous() for k, v in self.quant_state.items()}
        out["source_mean"] = self.source_mean.detach().cpu().float().contiguous()
        out["source_std"] = self.source_std.detach().cpu().float().contiguous()
        if self.shift_reference is not None:
            out.update(self.shift_reference.tensors())
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 over the metadata and every tensor; what a knowledge bank is tied to."""
        return content_hash(self.metadata(), self.tensors())

    # ---- files ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = self.metadata()
        meta["content_sha256"] = content_hash(meta, self.tensors())
        return st_save(self.tensors(), metadata={_META_KEY: json.dumps(meta)})

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> ModelPack:
        path = Path(path)
        if not path.is_file():
            raise PackError(f"{path}: no such pack file (make one with 'zoa-ros calibrate')")
        return cls.from_bytes(path.read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<pack>") -> ModelPack:
        try:
            tensors = st_load(data)
            meta_text = read_metadata(data).get(_META_KEY)
        except (SafetensorError, ValueError, json.JSONDecodeError) as e:
            raise PackError(f"{name}: not a readable pack (truncated or not safetensors: {e})") \
                from e
        if meta_text is None:
            raise PackError(f"{name}: safetensors file without zoa_ros pack metadata")
        meta = json.loads(meta_text)
        if meta.get("format") != FORMAT:
            raise PackError(f"{name}: not a zoa_ros model pack (format {meta.get('format')!r})")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise PackError(f"{name}: pack format {meta['format_version']} is newer than this "
                            f"zoa_ros supports ({FORMAT_VERSION}); upgrade zoa_ros")
        stored = meta.pop("content_sha256", None)
        if stored != content_hash(meta, tensors):
            raise PackError(f"{name}: content hash mismatch: the pack was modified or corrupted")
        missing = [k for k in _STATS if k not in tensors]
        if missing:
            raise PackError(f"{name}: pack lacks tensors {missing}")
        model = meta["model"]
        return cls(
            spec=ModelSpec(model["name"], model["weights"], model["num_classes"], model["seed"]),
            quant=QuantConfig(**meta["quant"]),
            weights_sha256=meta["weights_sha256"],
            labels=meta["labels"],
            data_config=meta["data_config"],
            family=meta["family"],
            tap_names=meta["tap_names"],
            tap_sizes=meta["tap_sizes"],
            quant_state={k[len(_QUANT):]: v for k, v in tensors.items() if k.startswith(_QUANT)},
            source_mean=tensors["source_mean"],
            source_std=tensors["source_std"],
            calibration=meta["calibration"],
            versions=meta["versions"],
            shift_reference=ShiftReference.from_tensors(
                tensors, (meta["calibration"].get("shift_reference") or {}).get("images", 0)),
        )

    # ---- model ----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The quantized model, rebuilt from its weights source and the stored quantizer state.

        Refuses weights that differ from the ones the pack was calibrated with.
        """
        actual = weights_fingerprint(self.spec)
        if actual != self.weights_sha256:
            raise PackError(
                f"weights {self.spec.weights!r} (sha256 {actual[:12]}) differ from the ones this "
                f"pack was calibrated with (sha256 {self.weights_sha256[:12]}); recalibrate")
        model = build_model(self.spec)
        try:
            quantize_model(model, self.quant, state=self.quant_state)
        except ValueError as e:
            raise PackError(f"pack does not fit model {self.spec.name!r}: {e}") from e
        return model.eval()

    def summary(self) -> dict:
        meta = self.metadata()
        meta.pop("labels")
        meta["num_labels"] = len(self.labels)
        meta["fingerprint"] = self.fingerprint
        meta["quantizers"] = len(self.quant_state)
        meta["source_stats_dims"] = int(self.source_mean.numel())
        return meta


def library_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import timm

    import zoa_ros
    return {"zoa_ros": zoa_ros.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "safetensors": safetensors.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}
