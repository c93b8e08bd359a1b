"""Knowledge-bank files: exact round trip, and refusal of bad files with the live bank intact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import rewritten_bank

from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.bank import file as bank_file


def _trained(pack, images, steps: int = 6, **config) -> ZOA:
    method = ZOA(pack.build_model(), pack,
                 {"lr": 1e-2, "detect_min_batch": 16, "alpha_init": "normal", **config},
                 torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    for s in range(steps):
        x = images(pack, 16, seed=s, size=64 if pack.family == "batchnorm" else None)
        if s >= steps // 2:
            x = x + 1.5 * torch.randn(x.shape, generator=gen)
        method.forward_and_adapt(x)
        if s == 0:
            method.mark_domain_change()     # a second entry, whatever the detector says
    return method


def _snapshot(method: ZOA) -> tuple:
    return method.params, dict(method.state_tensors()), method.domain_changes


def _assert_unchanged(method: ZOA, snap: tuple) -> None:
    params, tensors, changes = snap
    assert method.params is params and method.domain_changes == changes
    now = method.state_tensors()
    assert now.keys() == tensors.keys()
    assert all(torch.equal(now[k], tensors[k]) for k in now)


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_round_trip_is_exact(zoa_pack, zoa_images, tmp_path, name):
    pack = zoa_pack(name)
    config = {"bn_stats": "running"} if name == "test_resnet" else {}
    source = _trained(pack, zoa_images, **config)
    assert source.bank_summary()["entries"] == 2 and source.detector.mean is not None
    path = tmp_path / "mission.bank"
    bank_file.save(path, source, pack, provenance={"robot": "r2", "site": "lab"})

    target = ZOA(pack.build_model(), pack, config, torch.Generator().manual_seed(5))
    meta = bank_file.load(path, target, pack)
    assert meta["provenance"] == {"robot": "r2", "site": "lab"}
    a, b = source.state_tensors(), target.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(source.params.effective, target.params.effective)
    assert torch.equal(source.similarity, target.similarity)
    assert (target.domain_changes, target.domain_id) == (source.domain_changes, source.domain_id)
    x = zoa_images(pack, 4, seed=50, size=64 if name == "test_resnet" else None)
    assert torch.equal(source.predict(x), target.predict(x))

    info = bank_file.inspect_bank(path)
    assert info["entries"] == 2 and info["pack_fingerprint"] == pack.fingerprint
    assert info["bytes_per_entry"] == 4 * source.layout.size
    assert info["tensor_bytes"]["entries"] == 2 * 4 * source.layout.size
    assert [layer["name"] for layer in info["layers"]] == source.layer_names
    assert info["file_bytes"] == path.stat().st_size


def test_bad_files_are_refused_and_the_live_bank_is_untouched(zoa_pack, zoa_images, tmp_path):
    pack = zoa_pack("test_vit")
    source = _trained(pack, zoa_images)
    good = tmp_path / "good.bank"
    bank_file.save(good, source, pack)
    data = good.read_bytes()
    live = _trained(pack, zoa_images, steps=4)
    snap = _snapshot(live)

    def refused(content: bytes, match: str, target_pack=pack, method=live) -> None:
        path = tmp_path / "bad.bank"
        path.write_bytes(content)
        with pytest.raises(bank_file.BankError, match=match):
            bank_file.load(path, method, target_pack)

    refused(data[: len(data) // 2], "truncated|hash")
    refused(data[:5], "truncated")
    flipped = bytearray(data)
    flipped[-10] ^= 0x01                                 # one bit in the tensor data
    refused(bytes(flipped), "hash mismatch")
    header = bytearray(data)
    pos = data.index(b"zoa_bank")
    header[pos + 40] ^= 0x20                             # one bit in the metadata JSON
    refused(bytes(header), "hash|readable|metadata|format")
    refused(rewritten_bank(data, format_version=99), "newer")
    refused(rewritten_bank(data, format="something.else"), "not a zoa_ros knowledge bank")
    other_pack = dataclasses.replace(pack, calibration={**pack.calibration, "note": "other"})
    refused(data, "another pack|belongs to model pack", target_pack=other_pack)
    _assert_unchanged(live, snap)

    # same pack, other adapted layers: refused by the method's validation
    all_layers = ZOA(pack.build_model(), pack, {"layers": "all"}, torch.Generator())
    before = all_layers.params
    refused(data, "other layers", method=all_layers)
    assert all_layers.params is before

    with pytest.raises(bank_file.BankError, match="no such"):
        bank_file.load(tmp_path / "missing.bank", live, pack)
    _assert_unchanged(live, snap)
    # the good file still loads afterwards
    bank_file.load(good, live, pack)
    assert live.bank_summary()["entries"] == source.bank_summary()["entries"]


def test_save_is_atomic_and_keeps_the_old_file_on_failure(zoa_pack, zoa_images, tmp_path,
                                                           monkeypatch):
    pack = zoa_pack("test_vit")
    method = _trained(pack, zoa_images, steps=2)
    path = tmp_path / "b.bank"
    bank_file.save(path, method, pack)
    old = path.read_bytes()

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        bank_file.save(path, method, pack)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["b.bank"]


def test_a_save_replaces_a_bank_and_nothing_else(zoa_pack, zoa_images, tmp_path) -> None:
    """Not a text file, not a safetensors file of another kind, not a folder: refused with the
    reason, the file untouched; a bank (of any pack) is replaced."""
    from safetensors.torch import save_file

    pack = zoa_pack("test_vit")
    method = _trained(pack, zoa_images, steps=2)
    text = tmp_path / "notes.txt"
    text.write_text("precious")
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, other, metadata={"format": "pt"})
    folder = tmp_path / "folder.zoabank"
    folder.mkdir()
    for path in (text, other, folder):
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(bank_file.BankError, match="is not a zoa_ros knowledge bank"):
            bank_file.save(path, method, pack)
        assert (path.read_bytes() if path.is_file() else None) == before
    bank = tmp_path / "k.zoabank"
    bank_file.save(bank, method, pack)
    bank_file.save(bank, method, pack)   # a bank is replaced
    damaged = bank.read_bytes()[:-50]    # so is one with its tensors cut short
    bank.write_bytes(damaged)
    bank_file.save(bank, method, pack)
    assert bank_file.read(bank)[1]["entries"] == method.params.entries
