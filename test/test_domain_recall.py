"""Domain recall (streaming BatchNorm models): stored domains' statistics come back with them."""

from __future__ import annotations

import pytest
import torch

from zoa_ros.core import bank_file
from zoa_ros.core.adapt.bank import BankState
from zoa_ros.core.adapt.domain_recall import (
    DomainMemory,
    DomainSignature,
    signature_tensors,
    signatures_from_tensors,
)
from zoa_ros.core.adapt.params import BATCH
from zoa_ros.core.adapt.taps import EarlyStats
from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.bank_file import BankError
from zoa_ros.core.bank_merge import BankInput, merge_banks

pytestmark = pytest.mark.usefixtures("single_thread")

STREAMING = {"bn_stats": "running", "frame_momentum": 0.01, "stats_prior": 0.75,
             "recall": True, "recall_window": 4, "detect_min_batch": 16, "min_adapt_batch": 8}


def _frames(mean: float, std: float, n: int, seed: int) -> list[EarlyStats]:
    gen = torch.Generator().manual_seed(seed)
    return [EarlyStats.of(mean + std * torch.randn(1, 3, 8, 8, generator=gen), 1)
            for _ in range(n)]


def _signature(mean: float, std: float, tag: float) -> DomainSignature:
    return DomainSignature(torch.full((3,), mean), torch.full((3,), std ** 2),
                           ((torch.full((2,), tag), torch.ones(2)),))


def test_window_matches_the_domain_it_came_from_and_nothing_else() -> None:
    memory = DomainMemory(threshold=0.2, window=4, momentum=0.36)
    memory.replace_stored([_signature(0.0, 1.0, 1.0), None, _signature(3.0, 0.3, 2.0)])
    for early in _frames(0.0, 1.0, 3, seed=0):
        memory.observe_frames(early, 1)
    assert memory.match() is None                      # fewer frames than the window
    memory.observe_frames(_frames(0.0, 1.0, 1, seed=1)[0], 1)
    assert memory.match().entry == 0
    for early in _frames(3.0, 0.3, 3, seed=2):
        memory.observe_frames(early, 1)
    assert memory.match() is None                      # the window straddles both domains
    memory.observe_frames(_frames(3.0, 0.3, 1, seed=3)[0], 1)
    assert memory.match().entry == 2                   # one window after the switch
    for early in _frames(-4.0, 5.0, 4, seed=4):
        memory.observe_frames(early, 1)
    assert memory.match() is None                      # an unknown domain recalls nothing


def test_signature_tensors_round_trip_and_refuse_bad_shapes() -> None:
    signatures = (_signature(0.0, 1.0, 1.0), None, _signature(3.0, 0.3, 2.0))
    tensors = signature_tensors(signatures)
    back = signatures_from_tensors(tensors, 3)
    assert back[1] is None
    for a, b in ((signatures[0], back[0]), (signatures[2], back[2])):
        assert torch.equal(a.early_mean, b.early_mean) and torch.equal(a.early_var, b.early_var)
        assert all(torch.equal(x, y) for xy, ab in zip(a.bn_stats, b.bn_stats, strict=True)
                   for x, y in zip(xy, ab, strict=True))
    assert signature_tensors([None, None]) == {}
    assert signatures_from_tensors({}, 3) == ()
    with pytest.raises(ValueError, match="fit 2 entries"):
        signatures_from_tensors(tensors, 2)
    with pytest.raises(ValueError, match="only some"):
        signatures_from_tensors({"signature.bn": tensors["signature.bn"]}, 3)


def _two_domains(shifted_batches, pack):
    (clean,) = shifted_batches(pack, 1, batch=16, size=64, noise=0.0, seed=5)
    (noisy,) = shifted_batches(pack, 1, batch=16, size=64, noise=1.5, seed=6)
    return clean, noisy


def _zoa(pack, **config) -> ZOA:
    return ZOA(pack.build_model(), pack, {**STREAMING, **config},
               torch.Generator().manual_seed(0))


def test_a_stored_domain_is_recalled_and_classified_as_in_batch_mode(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    method = _zoa(pack, lr=0.0, alpha_lr=0.0)          # affines fixed: statistics comparable
    clean, noisy = _two_domains(shifted_batches, pack)
    method.adapt(clean)                                # the first domain: no change yet
    assert method.memory.stored == ()
    info = method.adapt(noisy)
    assert info.changed and method.params.entries == 1
    (stored,) = method.memory.stored                   # the clean domain's signature
    for i in range(4):                                 # a window of clean frames comes back
        method.predict_with_record(clean[i:i + 1])
    match = method.memory.match()
    assert match is not None and match.entry == 0
    # A recalled domain's frames are normalised with its statistics alone: as in batch mode
    # (the stored statistics are exactly that batch's, up to the unbiased variance).
    params = method.params.replace(bn_stats=stored.bn_stats)
    batch = method._forward(clean, method.params, BATCH).logits
    recalled = method.predict(clean)
    plain = method._forward(clean, params, "running").logits   # with the source prior
    gap, off = float((recalled - batch).abs().max()), float((plain - batch).abs().max())
    assert gap < 0.1 * off
    for i in range(4):                                 # noisy frames: the current domain
        method.predict_with_record(noisy[i:i + 1])
    assert method.memory.match().entry is None


def test_without_recall_predictions_ignore_the_memory(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    clean, noisy = _two_domains(shifted_batches, pack)
    on, off = _zoa(pack), _zoa(pack, recall=False)
    for method in (on, off):
        method.adapt(clean)
        method.adapt(noisy)
        for i in range(4):
            method.predict_with_record(clean[i:i + 1])
    assert on.memory.match() is not None and off.memory.match() is None
    assert not torch.allclose(on.predict(clean), off.predict(clean))


def test_bank_files_carry_the_signatures(zoa_pack, shifted_batches, tmp_path):
    pack = zoa_pack("test_resnet")
    method = _zoa(pack)
    clean, noisy = _two_domains(shifted_batches, pack)
    method.adapt(clean)
    method.adapt(noisy)
    path = tmp_path / "bank.safetensors"
    bank_file.save(path, method, pack)
    assert bank_file.inspect_bank(path)["domain_signatures"] == 1
    fresh = _zoa(pack)
    bank_file.load(path, fresh, pack)
    (a,), (b,) = method.memory.stored, fresh.memory.stored
    assert torch.equal(a.early_mean, b.early_mean)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
               for x, y in zip(a.bn_stats, b.bn_stats, strict=True))
    for i in range(4):
        fresh.predict_with_record(clean[i:i + 1])
    assert fresh.memory.match().entry == 0             # recalled in the next mission
    # A signature of another model is refused and the running memory is kept.
    state, _ = bank_file.read(path)
    bad = DomainSignature(b.early_mean[:1], b.early_var[:1], b.bn_stats)
    wrong = BankState(**{**state.__dict__, "signatures": (bad,)})
    with pytest.raises(ValueError, match="signature does not fit"):
        fresh.import_bank(wrong)
    assert fresh.memory.stored[0] is b
    with pytest.raises(BankError):
        bank_file.load(path, _zoa(pack, layers=["bn1"]), pack)


def test_merged_banks_keep_each_entrys_signature(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    clean, noisy = _two_domains(shifted_batches, pack)
    states = []
    for first, second in ((clean, noisy), (noisy, clean)):
        method = _zoa(pack)
        method.adapt(first)
        method.adapt(second)
        states.append(method.export_bank())
    merged = merge_banks([BankInput(f"b{i}", s, pack.fingerprint)
                          for i, s in enumerate(states)], capacity=8)
    sigs = merged.state.entry_signatures()
    assert len(sigs) == 2
    assert torch.equal(sigs[0].early_mean, states[0].signatures[0].early_mean)
    assert torch.equal(sigs[1].early_mean, states[1].signatures[0].early_mean)
