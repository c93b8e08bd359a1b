"""The streaming statistics memory: a revisited domain is normalised with its own statistics."""

from __future__ import annotations

import pytest
import torch

from zoa_ros.core.adapt.params import RUNNING
from zoa_ros.core.adapt.stats_recall import StatsRecall
from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.bank.file import BankError, load, save
from zoa_ros.core.model.features import EarlyStats

STREAMING = {**ZOA.streaming_defaults, "detect": False, "no_harm": False}


def _stem(frames: int, shift: float, seed: int) -> EarlyStats:
    """Stem statistics of ``frames`` frames of a domain whose activations are offset by
    ``shift`` (4 channels, 8 x 8 positions)."""
    gen = torch.Generator().manual_seed(seed)
    return EarlyStats.of(torch.randn(frames, 4, 8, 8, generator=gen) + shift, channel_dim=1)


def _stats(value: float) -> tuple:
    return ((torch.full((3,), value), torch.full((3,), 1.0 + value)),)


def test_a_revisited_domain_gets_its_statistics_back():
    memory = StatsRecall(threshold=0.2, momentum=0.36, window=16, capacity=4)
    a, b = _stats(1.0), _stats(2.0)
    # domain A: the watch settles, nothing to recall
    assert all(memory.observe(_stem(16, 0.0, s), 16, a) is None for s in range(3))
    # change to B (never seen): A is remembered, nothing recalled
    assert memory.observe(_stem(16, 3.0, 10), 16, a) is None
    assert len(memory.entries) == 1 and memory.recalls == 0
    assert memory.observe(_stem(16, 3.0, 11), 16, b) is None
    # back to A: B is remembered, A's statistics come back
    recalled = memory.observe(_stem(16, 0.0, 20), 16, b)
    assert recalled is not None and torch.equal(recalled[0][0], a[0][0])
    assert memory.recalls == 1 and len(memory.entries) == 2


def test_a_look_up_that_confirms_a_recall_is_not_counted_twice():
    memory = StatsRecall(threshold=0.2, momentum=0.36, window=16, capacity=4)
    low, high = torch.full((4,), 0.5), torch.full((4,), 2.0)
    memory.remember((torch.zeros(4), low), _stats(1.0), threshold=0.1)
    memory.remember((torch.zeros(4), high), _stats(2.0), threshold=0.1)
    early = memory.find((torch.zeros(4), low * 1.05), threshold=0.1)   # the early look-up
    assert early is not None and memory.recalls == 1
    assert memory.find((torch.zeros(4), low), 0.1, recalled=early) is early
    assert memory.recalls == 1                     # the settled window confirmed it
    other = memory.find((torch.zeros(4), high), 0.1, recalled=early)
    assert other is not early and memory.recalls == 2   # it found another domain
    assert memory.find((torch.zeros(4), 4 * high), 0.1, recalled=early) is None
    # a domain just told apart from the one looked up is left out, and nothing else is near
    assert memory.find((torch.zeros(4), low), 0.1, skip=early) is None


def test_single_frames_are_pooled_to_the_window():
    memory = StatsRecall(threshold=0.2, momentum=0.36, window=8, capacity=4)
    for s in range(16):
        memory.observe(_stem(1, 0.0, s), 1, _stats(1.0))
    assert memory.watch.mean is not None
    # 7 frames of a new domain are not enough for a test; the 8th completes the window
    for s in range(7):
        memory.observe(_stem(1, 3.0, 100 + s), 1, _stats(1.0))
        assert not memory.entries
    memory.observe(_stem(1, 3.0, 107), 1, _stats(1.0))
    assert len(memory.entries) == 1


def test_one_entry_per_domain_and_least_recently_used_goes_first():
    memory = StatsRecall(threshold=0.2, momentum=0.36, window=16, capacity=2)
    shifts = [0.0, 3.0, 0.0, 3.0, 6.0, 9.0]
    for i, shift in enumerate(shifts):
        memory.observe(_stem(16, shift, i), 16, _stats(shift))
    # 0 and 3 were each stored once (re-stored, not duplicated); 6 pushed the oldest out
    keys = [round(float(e.key_mean.mean())) for e in memory.entries]
    assert keys == [3, 6]
    with pytest.raises(ValueError):
        StatsRecall(threshold=0.2, momentum=0.36, window=1, capacity=2)


def test_the_stored_statistics_hold_none_of_the_next_domain():
    """A change that begins late in a window fires a window later; by then the new domain's
    frames are in the running estimate. The entry keeps the estimate from before them."""
    memory = StatsRecall(threshold=0.2, momentum=0.36, window=8, capacity=4)
    estimate, before_b = 0.0, set()
    for i in range(40):
        in_b = i >= 29                       # B begins at the 6th frame of the 4th window
        if not in_b or i == 29:
            before_b.add(estimate)           # what the A frames (and B's first) see
        memory.observe(_stem(1, 3.0 if in_b else 0.0, i), 1, _stats(estimate))
        estimate = 0.9 * estimate + 0.1 * (10.0 if in_b else float(i % 2))   # the frames rule
        if memory.entries:
            break
    assert len(memory.entries) == 1
    stored = float(memory.entries[0].stats[0][0][0])
    assert stored < 1.0 and min(abs(stored - v) for v in before_b) < 1e-6


def _shifted(x: torch.Tensor, shift: float) -> torch.Tensor:
    return x * (1.0 + shift) + shift


def test_zoa_recalls_within_the_forward_pass_and_banks_the_memory(zoa_pack, zoa_images,
                                                                  tmp_path):
    pack = zoa_pack("test_resnet")
    method = ZOA(pack.build_model(), pack, {**STREAMING, "recall_window": 8},
                 torch.Generator().manual_seed(0))
    assert method.recall is not None
    x = zoa_images(pack, 16, size=64)
    seen = []
    for _ in range(3):
        method.predict_with_record(x[:8])
        seen.append(method.params.bn_stats)
    # A is remembered as it stood at the start of the window before the one that fired
    a_stats = seen[1]
    for _ in range(3):
        method.predict_with_record(_shifted(x[8:], 2.0))
    assert len(method.recall.entries) == 1 and method.recall.recalls == 0
    # the return to A is classified with A's stored statistics, already in this forward pass
    expected = method._forward(x[:8], method.params.replace(bn_stats=a_stats), RUNNING).logits
    logits, _ = method.predict_with_record(x[:8])
    assert method.recall.recalls == 1
    assert torch.allclose(logits, expected, atol=1e-5)
    summary = method.bank_summary()
    assert summary["recall_entries"] == 2 and summary["recall_bytes"] > 0

    # the memory travels in the bank file; a fresh method gets the same entries
    path = tmp_path / "bank.safetensors"
    save(path, method, pack)
    fresh = ZOA(pack.build_model(), pack, {**STREAMING, "recall_window": 8},
                torch.Generator().manual_seed(0))
    load(path, fresh, pack)
    assert len(fresh.recall.entries) == 2
    for mine, theirs in zip(method.recall.entries, fresh.recall.entries, strict=True):
        assert torch.equal(mine.key_mean, theirs.key_mean)
        assert all(torch.equal(m, n) for (m, _), (n, _) in zip(mine.stats, theirs.stats,
                                                               strict=True))
    # a batch-mode method keeps a loaded memory untouched and saves it again
    batch = ZOA(pack.build_model(), pack, {"bn_stats": "batch"}, torch.Generator())
    assert batch.recall is None
    load(path, batch, pack)
    again = tmp_path / "again.safetensors"
    save(again, batch, pack)
    load(again, fresh, pack)
    assert len(fresh.recall.entries) == 2
    batch.reset()                              # a reset empties it with the rest of the bank
    save(again, batch, pack)
    load(again, fresh, pack)
    assert not fresh.recall.entries


def test_a_bad_memory_in_a_bank_is_refused_and_the_running_one_kept(zoa_pack, zoa_images,
                                                                   tmp_path):
    pack = zoa_pack("test_resnet")
    method = ZOA(pack.build_model(), pack, {**STREAMING, "recall_window": 8},
                 torch.Generator().manual_seed(0))
    x = zoa_images(pack, 8, size=64)
    for shift in (0.0, 0.0, 2.0, 2.0):
        method.predict_with_record(_shifted(x, shift))
    state = method.export_bank()
    keys = state.recall_keys
    state.recall_keys = (keys[0][:, :-1], keys[1][:, :-1])    # wrong channel count
    before = [e.key_mean.clone() for e in method.recall.entries]
    with pytest.raises(ValueError, match=r"recall\.key_mean"):
        method.import_bank(state)
    assert len(before) == 1
    assert all(torch.equal(e.key_mean, b) for e, b in zip(method.recall.entries, before,
                                                           strict=True))
    state.recall_keys = (keys[0].clone().fill_(float("nan")), keys[1])
    with pytest.raises(ValueError, match="non-finite"):
        method.import_bank(state)
    path = tmp_path / "bad.safetensors"
    save(path, method, pack)
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(BankError):
        load(path, method, pack)
    assert len(method.recall.entries) == len(before)


def test_streaming_mode_turns_the_memory_on(zoa_pack):
    """On by default where single frames use running statistics; off in batch mode, off for
    LayerNorm models, and off when asked."""
    from zoa_ros.core.engine import Engine

    bn, ln = zoa_pack("test_resnet"), zoa_pack("test_vit")
    assert Engine(bn, method="zoa", mode="streaming").method.recall is not None
    assert Engine(bn, method="zoa", mode="batch").method.recall is None
    assert Engine(ln, method="zoa", mode="streaming").method.recall is None
    assert Engine(bn, method="zoa", mode="streaming",
                  method_config={"stats_recall": False}).method.recall is None
    with pytest.raises(ValueError, match="recall_window"):
        Engine(bn, method="zoa", mode="streaming", method_config={"recall_window": 1})


def test_reset_keeps_the_memory_with_the_bank(zoa_pack, zoa_images):
    from zoa_ros.core.controls import reset_to_source
    from zoa_ros.core.engine import Engine

    pack = zoa_pack("test_resnet")
    engine = Engine(pack, method="zoa", mode="streaming",
                    method_config={"recall_window": 8, "detect": False, "gate": False,
                                   "restart_from_source": False})
    method = engine.method
    x = zoa_images(pack, 8, size=64)
    for shift in (0.0, 0.0, 2.0, 2.0, 0.0):
        method.predict_with_record(_shifted(x, shift))
    assert len(method.recall.entries) == 2 and method.recall.recalls == 1
    assert (engine.stats().recall_entries, engine.stats().recalls) == (2, 1)
    keys = [e.key_mean.clone() for e in method.recall.entries]
    reset_to_source(engine, keep_bank=True)
    assert all(torch.equal(e.key_mean, k)
               for e, k in zip(method.recall.entries, keys, strict=True))
    assert method.recall.watch.mean is None    # the current domain starts over
    assert all(torch.equal(m, n) for (m, _), (n, _) in zip(method.params.bn_stats,
                                                           method._initial.bn_stats, strict=True))
    reset_to_source(engine, keep_bank=False)
    assert not method.recall.entries
