"""The engine: prediction, buffering, when it adapts, threads, counters, determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import StandInNone, StandInShift

from zoa_ros.core.engine import Engine, EngineConfig, MalformedFrame, Prediction
from zoa_ros.core.files.sample_photos import load_photo
from zoa_ros.core.runtime.memory import PeakTensorMemory, module_bytes

PHOTOS = [load_photo(n) for n in ("chelsea", "astronaut", "coffee", "rocket")]


@pytest.fixture(scope="module")
def vit_pack(make_pack):
    return make_pack("test_vit")[0]


def engine(pack, stand_in_methods, **options) -> Engine:
    return Engine(pack, method_factory=stand_in_methods, **options)


def frames(eng: Engine, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` preprocessed frames (real photos plus a little noise so they differ)."""
    x = eng.preprocess([PHOTOS[i % len(PHOTOS)] for i in range(n)])
    return x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def feed(eng: Engine, x: torch.Tensor) -> list:
    """Streaming: classify + buffer one frame at a time, adapting when due."""
    reports = []
    for i in range(len(x)):
        eng.predict(x[i:i + 1], observe=True)
        reports.append(eng.maybe_adapt())
    return reports


def test_predict_topk_from_images_arrays_and_tensors(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods, top_k=3)
    preds = eng.predict(PHOTOS[:2])
    assert len(preds) == 2 and all(isinstance(p, Prediction) for p in preds)
    for p in preds:
        assert len(p.top) == 3
        scores = [t.score for t in p.top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        assert p.label == vit_pack.labels[p.class_index] and p.score == scores[0]
        assert p.latency_ms > 0 and p.adapt_steps == 0 and p.domain_id == 0
    single = eng.predict(PHOTOS[0])  # one HxWx3 array
    tensor = eng.predict(eng.preprocess(PHOTOS[0])[0])  # CHW tensor
    assert single[0].class_index == tensor[0].class_index == preds[0].class_index
    gray = eng.predict(PHOTOS[0].mean(axis=2).astype(np.uint8))
    assert len(gray) == 1
    stats = eng.stats()
    assert stats.frames == 5 and stats.samples_forwarded == 5 and stats.forward_per_frame == 1.0
    assert stats.adapt_steps == 0 and stats.buffered == 0


def test_malformed_frames_are_refused_and_counted(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods)
    with pytest.raises(MalformedFrame):
        eng.predict(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(MalformedFrame):
        eng.predict(np.zeros((20, 20, 5), np.uint8))
    with pytest.raises(MalformedFrame):
        eng.predict(torch.zeros(2, 1, 8, 8))
    eng.note_malformed(2)  # e.g. an unsupported ROS encoding, counted by the node
    assert eng.stats().malformed == 5 and eng.stats().frames == 0


def test_streaming_adapts_every_interval_frames(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods, method="shift", batch_size=16)
    reports = feed(eng, frames(eng, 40))
    steps = [i for i, r in enumerate(reports) if r is not None]
    assert steps == [15, 31]
    assert [reports[i].frames for i in steps] == [16, 16]
    assert [reports[i].step for i in steps] == [1, 2]
    assert reports[31].domain_changed and not reports[15].domain_changed
    s = eng.stats()
    assert (s.frames, s.frames_observed, s.frames_adapted, s.buffered) == (40, 40, 32, 8)
    assert s.adapt_steps == 2 and s.adapt_skipped == 0 and s.domain_changes == 1
    assert s.domain_id == 1 and s.bank_entries == 1 and s.bank_bytes > 0
    assert s.last_step_ms > 0 and s.mean_step_ms > 0
    # stand-in: inference 1 frame each + one 16-frame pass per step
    assert s.samples_forwarded == 40 + 32 and s.forward_passes == 40 + 2
    # predictions say which step's parameters produced them
    assert eng.predict(frames(eng, 1))[0].adapt_steps == 2


def test_adapted_batch_is_the_buffered_frames_with_their_records(vit_pack, stand_in_methods
                                                                   ) -> None:
    eng = engine(vit_pack, stand_in_methods, batch_size=16)
    x = frames(eng, 16)
    feed(eng, x)
    (adapted,) = eng.method.adapted
    assert torch.equal(adapted, x)
    assert eng.method.cached == [[("record", 1)] * 16]  # one per predict call, in order
    for i in range(0, 16, 4):  # 4-frame predict calls: whole calls -> their 4 records
        eng.predict(x[i:i + 4], observe=True)
    assert eng.maybe_adapt() is not None
    assert eng.method.cached[-1] == [("record", 4)] * 4
    for i in range(0, 16, 4):
        eng.predict(x[i:i + 4], observe=True)
    eng.predict(x[:2], observe=True)  # 18 frames: the buffer of 16 now starts inside a call
    assert eng.maybe_adapt() is not None
    assert eng.method.cached[-1] is None
    eng.observe(x)  # frames without a record
    eng.maybe_adapt()
    assert eng.method.cached[-1] is None


def test_too_few_frames_skip_and_interval_shorter_than_batch(vit_pack, stand_in_methods
                                                               ) -> None:
    eng = engine(vit_pack, stand_in_methods, batch_size=16, interval_frames=8, min_frames=12,
                 buffer_size=32)
    reports = feed(eng, frames(eng, 24))
    # due every 8 frames; at 8 and 24 only 8 frames are buffered (< 12): skipped, kept
    assert [i for i, r in enumerate(reports) if r is not None] == [15]
    assert reports[15].frames == 16
    s = eng.stats()
    assert (s.adapt_steps, s.adapt_skipped, s.buffered) == (1, 2, 8)


def test_stride_and_buffer_overflow(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods, batch_size=16, stride=2, interval_frames=64,
                 buffer_size=16)
    x = frames(eng, 40)
    feed(eng, x)
    s = eng.stats()
    assert s.frames_observed == 40 and s.buffered == 16 and s.buffer_dropped == 4
    assert s.adapt_steps == 0
    report = eng.maybe_adapt(force=True)
    assert report is not None and report.frames == 16
    assert torch.equal(eng.method.adapted[0], x[8:40:2])  # the newest 16 of every 2nd frame


def test_shuffled_buffer_is_seeded(vit_pack, stand_in_methods) -> None:
    picked = []
    for seed in (3, 3, 4):
        eng = engine(vit_pack, stand_in_methods, batch_size=16, buffer_size=32,
                     interval_frames=32, shuffle=True, seed=seed)
        x = frames(eng, 32)
        feed(eng, x)
        (batch,) = eng.method.adapted
        picked.append([int(torch.nonzero((x == f).flatten(1).all(1))[0]) for f in batch])
        assert eng.stats().buffered == 16
    assert picked[0] == picked[1] and picked[0] != picked[2]
    assert len(set(picked[0])) == 16 and sorted(picked[0]) != list(range(16, 32))


def test_min_period_uses_the_injected_clock(vit_pack, stand_in_methods) -> None:
    now = [100.0]
    eng = Engine(vit_pack, method_factory=stand_in_methods, clock=lambda: now[0],
                 batch_size=16, min_period_s=10.0)
    x = frames(eng, 16)
    assert sum(r is not None for r in feed(eng, x)) == 1
    now[0] = 105.0
    assert all(r is None for r in feed(eng, x))  # due after 16 frames, but only 5 s passed
    assert eng.maybe_adapt() is None
    assert eng.stats().adapt_deferred == 1  # counted once per due step, not once per call
    now[0] = 110.0
    report = eng.maybe_adapt()
    assert report is not None and report.step == 2
    assert eng.stats().adapt_steps == 2


def test_batch_mode_classifies_then_adapts(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods, method="shift", mode="batch", batch_size=16)
    x = frames(eng, 16)
    before = eng.predict(x)
    first = eng.run_batch(x)
    assert [p.class_index for p in first] == [p.class_index for p in before]
    assert all(p.adapt_steps == 0 for p in first)
    second = eng.run_batch(x)
    assert all(p.adapt_steps == 1 for p in second)
    eng.run_batch(x[:4])  # smaller than min_frames: classified only
    s = eng.stats()
    assert s.adapt_steps == 2 and s.adapt_skipped == 1 and s.frames == 16 + 32 + 4
    assert s.frames_adapted == 32
    assert eng.process(x)[0].adapt_steps == 2 and eng.stats().adapt_steps == 3


def test_reset_and_switching_adaptation_off(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods, method="shift", batch_size=16)
    x = frames(eng, 20)
    feed(eng, x)
    assert eng.stats().buffered == 4
    eng.reset()
    assert eng.method.resets == 1 and eng.stats().buffered == 0 and eng.stats().resets == 1
    assert torch.count_nonzero(eng.method.shift) == 0
    eng.set_adaptation(False)
    feed(eng, x)
    assert eng.stats().buffered == 0 and eng.stats().adapt_steps == 1
    assert eng.maybe_adapt(force=True) is None
    eng.set_adaptation(True)
    assert all(r is None for r in feed(eng, x[:15])) and feed(eng, x[:1])[0] is not None


def test_predict_does_not_wait_for_an_adaptation_step(vit_pack, stand_in_methods,
                                                      steps_in_background) -> None:
    """Predict in a loop on one thread while slow adaptation steps run on another."""
    eng = engine(vit_pack, stand_in_methods, method="shift", batch_size=16,
                 method_config={"delay_s": 0.3})
    x = frames(eng, 16)
    for i in range(16):
        eng.predict(x[i:i + 1], observe=True)
    done_during_step = []
    # a due step, then three more on whatever the predict loop buffered
    steps = steps_in_background(eng, forced=3, due_first=True)
    steps.started.wait()
    count = 0
    while not steps.finished.is_set():
        preds = eng.predict(x[count % 16:count % 16 + 1], observe=True)
        assert len(preds) == 1 and np.isfinite(preds[0].score)
        count += 1
        if eng.stats().adapt_steps == 0:
            done_during_step.append(count)
    steps.thread.join()
    assert not steps.errors
    assert done_during_step, "predict() was blocked by the adaptation step"
    s = eng.stats()
    assert s.frames == 16 + count and s.frames_observed == 16 + count
    assert s.adapt_steps >= 2 and s.frames_adapted + s.buffered + s.buffer_dropped \
        == s.frames_observed


def test_same_seed_same_results(vit_pack, stand_in_methods) -> None:
    outs = []
    for _ in range(2):
        eng = engine(vit_pack, stand_in_methods, method="shift", batch_size=16, seed=5)
        x = frames(eng, 48, seed=1)
        feed(eng, x)
        outs.append(([p.class_index for p in eng.predict(x)], eng.method.shift.clone()))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        EngineConfig(mode="online")
    with pytest.raises(ValueError, match="buffer_size"):
        EngineConfig(batch_size=64, buffer_size=16)
    with pytest.raises(ValueError, match="min_period_s"):
        EngineConfig(min_period_s=-1)


def test_batchnorm_model_streams(make_pack, stand_in_methods) -> None:
    pack = make_pack("test_resnet")[0]
    eng = engine(pack, stand_in_methods, batch_size=16)
    feed(eng, frames(eng, 16))
    assert isinstance(eng.method, StandInNone) and eng.stats().adapt_steps == 1
    assert not isinstance(eng.method, StandInShift)


def test_peak_tensor_memory_counts_what_a_block_allocates() -> None:
    existing = torch.zeros(1000, 1000)
    with PeakTensorMemory("cpu") as m:
        a = torch.empty(1000, 1000)      # 4 MB
        b = a * 2                        # 4 MB more
        del a
        existing.add_(1)                 # in place on a tensor from before: not counted
        view = existing.t()              # view of a tensor from before: not counted
        del b
        c = torch.zeros(250, 1000)       # 1 MB after 8 MB were freed
    assert m.peak_bytes == 8_000_000 and c.numel() and view.numel()
    lin = torch.nn.Linear(10, 10)
    assert module_bytes(lin) == 4 * 110


def test_registry_none_if_available(vit_pack) -> None:
    pytest.importorskip("zoa_ros.core.adapt.registry")
    eng = Engine(vit_pack, method="none", batch_size=16, mode="batch")
    x = frames(eng, 16)
    first = eng.run_batch(x)
    assert [p.class_index for p in eng.run_batch(x)] == [p.class_index for p in first]
    assert eng.stats().forward_per_frame == pytest.approx(1.0)


def test_bank_save_and_load_round_trip(vit_pack, make_pack, tmp_path) -> None:
    bank_file = pytest.importorskip("zoa_ros.core.bank.file")
    config = {"detect_min_batch": 16, "lr": 0.05}
    eng = Engine(vit_pack, method="zoa", mode="batch", batch_size=16, method_config=config)
    x = frames(eng, 16)
    for i in range(3):
        eng.run_batch(frames(eng, 16, seed=i))
    eng.save_bank(tmp_path / "bank.zoabank")
    expected = [p.top for p in eng.predict(x)]
    fresh = Engine(vit_pack, method="zoa", mode="batch", batch_size=16, method_config=config)
    assert [p.top for p in fresh.predict(x)] != expected
    meta = fresh.load_bank(tmp_path / "bank.zoabank")
    assert meta["pack_fingerprint"] == vit_pack.fingerprint
    assert [p.top for p in fresh.predict(x)] == expected
    other = Engine(make_pack("test_resnet")[0], method="zoa", batch_size=16)
    before = [p.top for p in other.predict(x)]
    with pytest.raises(bank_file.BankError, match="belongs to model pack"):
        other.load_bank(tmp_path / "bank.zoabank")
    assert [p.top for p in other.predict(x)] == before
    with pytest.raises(ValueError, match="no knowledge bank"):
        Engine(vit_pack, method="none").save_bank(tmp_path / "none.zoabank")


def test_streaming_latency_is_small(vit_pack, stand_in_methods) -> None:
    eng = engine(vit_pack, stand_in_methods)
    x = frames(eng, 1)
    start = time.perf_counter()
    for _ in range(5):
        eng.predict(x)
    assert (time.perf_counter() - start) / 5 < 1.0


def test_streaming_gives_batchnorm_methods_running_statistics(make_pack) -> None:
    """A one-frame batch has no usable BatchNorm statistics: streaming engines switch methods to
    their running test statistics unless the user chose otherwise."""
    pack = make_pack("test_resnet")[0]
    streaming = Engine(pack, EngineConfig(method="zoa", mode="streaming"))
    assert streaming.method.cfg.bn_stats == "running"
    chosen = Engine(pack, EngineConfig(method="zoa", mode="streaming",
                                       method_config={"bn_stats": "batch"}))
    assert chosen.method.cfg.bn_stats == "batch"
    assert Engine(pack, EngineConfig(method="zoa", mode="batch")).method.cfg.bn_stats == "batch"
