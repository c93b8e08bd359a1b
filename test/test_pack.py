"""Model packs: exact round trip, and refusal of truncated, tampered or mismatched files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from zoa_ros.core.files.images import find_images
from zoa_ros.core.model.calibration import build_pack
from zoa_ros.core.model.factory import ModelSpec, build_model
from zoa_ros.core.model.pack import FORMAT_VERSION, ModelPack, PackError


@pytest.mark.parametrize("model", ["test_resnet", "test_vit"])
def test_round_trip_is_bit_exact(make_pack, model: str) -> None:
    pack, path = make_pack(model, "w8a8")
    loaded = ModelPack.load(path)
    assert loaded.metadata() == pack.metadata()
    assert loaded.fingerprint == pack.fingerprint
    for key, value in pack.tensors().items():
        assert torch.equal(loaded.tensors()[key], value), key
    x = torch.randn(2, *pack.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(pack.build_model()(x), loaded.build_model()(x))
    assert len(pack.source_mean) == sum(pack.tap_sizes)
    assert torch.all(pack.source_std > 0)


def test_truncated_pack_is_refused(make_pack, tmp_path) -> None:
    _, path = make_pack()
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.zoapack"
        bad.write_bytes(data[:cut])
        with pytest.raises(PackError, match="not a readable pack"):
            ModelPack.load(bad)


def test_tampered_pack_is_refused(make_pack, tmp_path) -> None:
    _, path = make_pack()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a bit of the last tensor
    bad = tmp_path / "flipped.zoapack"
    bad.write_bytes(bytes(data))
    with pytest.raises(PackError, match="content hash mismatch"):
        ModelPack.load(bad)


def _rewrite_meta(pack: ModelPack, **changes) -> bytes:
    meta = {**pack.metadata(), **changes}
    return st_save(pack.tensors(), metadata={"zoa_pack": json.dumps(meta)})


def test_foreign_and_newer_files_are_refused(make_pack, tmp_path) -> None:
    pack, _ = make_pack()
    newer = tmp_path / "newer.zoapack"
    newer.write_bytes(_rewrite_meta(pack, format_version=FORMAT_VERSION + 1))
    with pytest.raises(PackError, match="newer than this zoa_ros supports"):
        ModelPack.load(newer)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(PackError, match="without zoa_ros pack metadata"):
        ModelPack.load(other)
    with pytest.raises(PackError, match="no such pack file"):
        ModelPack.load(tmp_path / "missing.zoapack")


def test_changed_weights_file_is_refused(photo_dir, tmp_path) -> None:
    weights = tmp_path / "w.safetensors"
    save_file(build_model(ModelSpec("test_resnet", seed=1)).state_dict(), str(weights))
    pack = build_pack(ModelSpec("test_resnet", str(weights)), _quant("w8a8"),
                      find_images(photo_dir), num_images=4, progress=False)
    pack.build_model()
    save_file(build_model(ModelSpec("test_resnet", seed=2)).state_dict(), str(weights))
    with pytest.raises(PackError, match="differ from the ones this pack was calibrated with"):
        pack.build_model()


def test_failed_save_keeps_the_old_file(make_pack, tmp_path, monkeypatch) -> None:
    pack, _ = make_pack()
    path = tmp_path / "keep.zoapack"
    pack.save(path)
    before = path.read_bytes()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        pack.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.zoapack"]


def _quant(name: str):
    from zoa_ros.core.quant import QuantConfig
    return QuantConfig.parse(name)
