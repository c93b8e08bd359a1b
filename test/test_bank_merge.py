"""Merging knowledge banks: union pruned by ZOA's own rule, outputs of selected entries equal
those of their source banks, refusals and failures write nothing, per-entry provenance."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import rewritten_bank

from zoa_ros.core.adapt.bank import pick_removal, similarity_matrix
from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.bank import file as bank_file
from zoa_ros.core.bank.merge import BankInput, merge_banks, merge_files
from zoa_ros.tools.cli import main

RESNET = {"bn_stats": "batch"}   # predictions normalise with batch statistics


def _method(pack, seed: int = 0, **config) -> ZOA:
    return ZOA(pack.build_model(), pack, {"alpha_init": "normal", **config},
               torch.Generator().manual_seed(seed))


def _with_entries(pack, n: int, seed: int, **config) -> ZOA:
    """A ZOA whose bank holds ``n`` distinct entries (random deltas banked as domains)."""
    method = _method(pack, seed, **config)
    gen = torch.Generator().manual_seed(100 + seed)
    for i in range(n):
        p = method.params
        eps = 0.05 * (i + 1) * torch.randn(p.eps.shape, generator=gen)
        method.store.publish(p.replace(eps=eps, version=p.version + 1))
        method.mark_domain_change()
    return method


def _saved(pack, folder: Path, name: str, n: int, seed: int, robot: str, mission: str,
           **config) -> Path:
    path = folder / name
    bank_file.save(path, _with_entries(pack, n, seed, **config), pack,
                   provenance={"robot": robot, "mission": mission})
    return path


def _select(method: ZOA, entry: int) -> None:
    """Mixing weights exactly one-hot on stored ``entry``, no current delta, no shift."""
    p = method.params
    alpha = torch.full_like(p.alpha, -10.0)
    alpha[entry + 1] = 10.0
    method.store.publish(p.replace(alpha=alpha, eps=torch.zeros_like(p.eps), shift_h=None,
                                   version=p.version + 1))


def _reference_prune(layout, entries: torch.Tensor, capacity: int) -> list[int]:
    """Indices removed by recomputing the full matrix and applying pick_removal each time."""
    ids = list(range(entries.shape[0]))
    removed = []
    while len(ids) > capacity:
        r = pick_removal(similarity_matrix(layout, entries[ids]))
        removed.append(ids.pop(r))
    return removed


def test_merge_is_the_union_pruned_by_the_method_rule(zoa_pack, zoa_images):
    pack = zoa_pack("test_resnet")
    a = _with_entries(pack, 3, seed=1, **RESNET).export_bank()
    b = _with_entries(pack, 3, seed=2, **RESNET).export_bank()
    near_copy = b.entries.clone()
    near_copy[1] = 1.5 * a.entries[0] + 1e-4 * torch.randn(a.entries.shape[1])
    b = dataclasses.replace(b, entries=near_copy)
    inputs = [BankInput("a.bank", a, pack.fingerprint), BankInput("b.bank", b, pack.fingerprint)]
    union = torch.cat([a.entries, b.entries])
    ids = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    layout = _method(pack, **RESNET).layout

    full = merge_banks(inputs, capacity=32)
    assert full.picked == tuple(ids) and full.removed == ()
    assert torch.equal(full.state.entries, union)

    one = merge_banks(inputs, capacity=5)           # the near-duplicate pair goes first
    assert one.removed == ((0, 0),)
    for capacity in (5, 3, 1):
        merged = merge_banks(inputs, capacity)
        gone = _reference_prune(layout, union, capacity)
        assert merged.removed == tuple(ids[i] for i in gone)
        kept = [i for i in range(len(ids)) if i not in gone]
        assert merged.picked == tuple(ids[i] for i in kept)
        assert torch.equal(merged.state.entries, union[kept])
        assert torch.allclose(merged.state.similarity,
                              similarity_matrix(layout, union[kept]), atol=1e-6)
        assert [o.source for o in merged.state.origins] == [
            ("a.bank", "b.bank")[ids[i][0]] for i in kept]

    # the merged bank starts neutral: outputs equal the source model's
    merged = merge_banks(inputs, capacity=4)
    target, fresh = _method(pack, **RESNET), _method(pack, **RESNET)
    target.import_bank(merged.state)
    assert target.params.entries == 4 and torch.count_nonzero(target.params.delta()) == 0
    x = zoa_images(pack, 4, seed=7, size=64)
    assert torch.equal(target.predict(x), fresh.predict(x))


@pytest.mark.parametrize(("name", "size", "config"),
                         [("test_resnet", 64, RESNET), ("test_vit", None, {})])
def test_selected_merged_entries_give_their_source_banks_outputs(zoa_pack, zoa_images, tmp_path,
                                                                  name, size, config):
    pack = zoa_pack(name)
    sources = [_saved(pack, tmp_path, "r1.bank", 3, 1, "r1", "north", **config),
               _saved(pack, tmp_path, "r2.bank", 2, 2, "r2", "south", **config)]
    out = tmp_path / "fleet.bank"
    merged = merge_files(sources, out, capacity=4, provenance={"robot": "base"})
    assert len(merged.picked) == 4 and len(merged.removed) == 1
    target = _method(pack, **config)
    bank_file.load(out, target, pack)
    loaded = {}
    for i, path in enumerate(sources):
        loaded[i] = _method(pack, **config)
        bank_file.load(path, loaded[i], pack)
    x = zoa_images(pack, 4, seed=3, size=size)
    outputs = []
    for m, (i, j) in enumerate(merged.picked):
        _select(target, m)
        _select(loaded[i], j)
        got, want = target.predict(x), loaded[i].predict(x)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        outputs.append(got)
    assert not torch.allclose(outputs[0], outputs[-1], atol=1e-3)   # entries really differ

    info = bank_file.inspect_bank(out)
    robots = {0: "r1", 1: "r2"}
    assert [o["robot"] for o in info["entry_provenance"]] == [robots[i] for i, _ in
                                                              merged.picked]
    assert [o["source"] for o in info["entry_provenance"]] == [str(sources[i]) for i, _ in
                                                               merged.picked]
    assert info["provenance"]["robot"] == "base"
    assert info["provenance"]["merged_from"] == f"{sources[0]}, {sources[1]}"


def test_refused_inputs_write_nothing(zoa_pack, tmp_path, capsys):
    pack = zoa_pack("test_resnet")
    good = _saved(pack, tmp_path, "good.bank", 2, 1, "r1", "m1", **RESNET)
    other_pack = dataclasses.replace(pack, calibration={**pack.calibration, "note": "other"})
    foreign = tmp_path / "foreign.bank"
    bank_file.save(foreign, _with_entries(pack, 1, 3, **RESNET), other_pack)
    layers = tmp_path / "layers.bank"
    bank_file.save(layers, _with_entries(pack, 1, 4, layers="all", **RESNET), pack)
    broken = tmp_path / "broken.bank"
    broken.write_bytes(good.read_bytes()[:200])
    out = tmp_path / "out.bank"
    before = sorted(p.name for p in tmp_path.iterdir())

    for bad, match in [(foreign, "different model packs"), (layers, "different layers"),
                       (broken, "not a readable bank"), (tmp_path / "none.bank", "no such")]:
        with pytest.raises(bank_file.BankError, match=match) as e:
            merge_files([good, bad], out, capacity=32)
        if match.startswith("different"):
            assert "good.bank" in str(e.value) and bad.name in str(e.value)
        assert main(["bank", "merge", str(good), str(bad), "--out", str(out)]) == 2
        assert match.split()[0] in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failure_mid_write_leaves_no_partial_output(zoa_pack, tmp_path, monkeypatch, capsys):
    pack = zoa_pack("test_resnet")
    a = _saved(pack, tmp_path, "a.bank", 2, 1, "r1", "m1", **RESNET)
    b = _saved(pack, tmp_path, "b.bank", 2, 2, "r2", "m2", **RESNET)
    out = tmp_path / "out.bank"

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr("os.replace", boom)
        with pytest.raises(OSError, match="disk full"):
            merge_files([a, b], out, capacity=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bank", "b.bank"]

    assert main(["bank", "merge", str(a), str(b), "--out", str(out), "--capacity", "3",
                 "--robot", "base", "--mission", "merge-1"]) == 0
    assert "3 of 4 entries" in capsys.readouterr().out
    written = out.read_bytes()
    assert main(["bank", "merge", str(a), str(b), "--out", str(out)]) == 2     # no --force
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == written
    with monkeypatch.context() as mp:                # a failed replace keeps the old output
        mp.setattr("os.replace", boom)
        with pytest.raises(OSError):
            merge_files([a, b], out, capacity=32, force=True)
    assert out.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bank", "b.bank", "out.bank"]
    assert main(["bank", "merge", str(a), str(b), "--out", str(out), "--force"]) == 0
    assert bank_file.inspect_bank(out)["entries"] == 4


def test_provenance_through_runs_old_files_and_inspect(zoa_pack, tmp_path, capsys):
    pack = zoa_pack("test_resnet")
    first = _saved(pack, tmp_path, "first.bank", 2, 1, "r1", "north", **RESNET)
    meta = bank_file.inspect_bank(first)
    origins = meta["entry_provenance"]
    assert [(o["robot"], o["mission"], o["domain_id"], o["source"]) for o in origins] == [
        ("r1", "north", 0, str(first)), ("r1", "north", 1, str(first))]
    assert all(o["created"].endswith("Z") for o in origins)

    # a later run keeps loaded entries' provenance and labels its own new entries
    run = _method(pack, **RESNET)
    bank_file.load(first, run, pack)
    run.mark_domain_change()
    second = tmp_path / "second.bank"
    bank_file.save(second, run, pack, provenance={"writer": "/r2/zoa_node"})
    later = bank_file.inspect_bank(second)["entry_provenance"]
    assert later[:2] == origins
    assert (later[2]["robot"], later[2]["mission"], later[2]["source"]) == (
        "/r2/zoa_node", "", str(second))
    assert later[2]["domain_id"] == 2

    # a file written before per-entry provenance existed loads, with unknown provenance
    old = tmp_path / "old.bank"
    old.write_bytes(_without_entry_provenance(first.read_bytes()))
    state, _ = bank_file.read(old)
    assert state.origins == () and state.entry_origins() == (None, None)
    legacy = _method(pack, **RESNET)
    bank_file.load(old, legacy, pack)
    assert legacy.export_bank().origins == (None, None)
    resaved = tmp_path / "resaved.bank"
    bank_file.save(resaved, legacy, pack, provenance={"robot": "r3"})
    assert bank_file.inspect_bank(resaved)["entry_provenance"] == [None, None]

    assert main(["bank", "inspect", str(old)]) == 0
    text = capsys.readouterr().out
    assert "provenance unknown" in text and "  0  ?" in text
    assert main(["bank", "inspect", str(second)]) == 0
    text = capsys.readouterr().out
    assert "north" in text and "/r2/zoa_node" in text and str(first) in text
    assert main(["bank", "inspect", "--json", str(second)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [o["robot"] for o in record["entry_provenance"]] == ["r1", "r1", "/r2/zoa_node"]

    # a mismatched provenance list is refused like any other inconsistent file
    bad = tmp_path / "bad.bank"
    bad.write_bytes(rewritten_bank(first.read_bytes(), entry_provenance=[None]))
    with pytest.raises(bank_file.BankError, match="entry origins"):
        bank_file.read(bad)


def _without_entry_provenance(data: bytes) -> bytes:
    return rewritten_bank(data, drop=("entry_provenance",))
