"""The shift gate (no-harm adaptation): its clean reference, its states, and ZOA behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoa_ros.core.adapt.shift_gate import (
    CHANGED,
    CLOSED,
    OPENED,
    PROBE,
    RESUMED,
    SETTLED,
    GateConfig,
    ShiftGate,
)
from zoa_ros.core.adapt.zoa import ZOA, measured_frames
from zoa_ros.core.data.domain_schedule import parse_schedule
from zoa_ros.core.data.stream import CorruptionStream
from zoa_ros.core.data.stream_order import StreamOrder
from zoa_ros.core.engine import Engine, EngineConfig
from zoa_ros.core.eval.evaluation import evaluate
from zoa_ros.core.files.images import find_images, read_rgb
from zoa_ros.core.model.calibration import build_pack
from zoa_ros.core.model.factory import ModelSpec
from zoa_ros.core.model.features import EarlyStats
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.model.shift_reference import (
    CHANGE,
    ENTROPY,
    STEM,
    ShiftReference,
    window_nulls,
)
from zoa_ros.core.quant import QuantConfig

CHANNELS = 4


def _frame(scale: float, seed: int, shift: float = 0.0) -> EarlyStats:
    gen = torch.Generator().manual_seed(seed)
    return EarlyStats.of(scale * torch.randn(1, CHANNELS, 8, 8, generator=gen) + shift,
                         channel_dim=1)


def _reference(frames: int = 256) -> ShiftReference:
    stem = [_frame(1.0, i) for i in range(frames)]
    entropies = torch.full((frames,), 1.0) + 0.1 * torch.rand(frames)
    pooled = stem[0]
    for s in stem[1:]:
        pooled = pooled + s
    return ShiftReference(pooled.mean, pooled.var,
                          window_nulls(stem, entropies, pooled.mean, pooled.var), frames)


def test_reference_thresholds_are_quantiles_of_clean_windows() -> None:
    reference = _reference()
    assert reference.window_sizes == [1, 2, 4, 8, 16, 32]
    assert {kind for kind, _ in reference.nulls} == {STEM, ENTROPY, CHANGE}
    values = reference.nulls[(STEM, 8)]
    assert torch.equal(values, values.sort().values) and len(values) == 256
    assert reference.threshold(STEM, 8, 0.5) == float(values[128])
    assert reference.threshold(STEM, 8, 1e-6) == float(values[-1])
    assert reference.window_images(32, 4) == 8 and reference.window_images(20, 4) == 4
    back = ShiftReference.from_tensors(reference.tensors(), 256)
    assert torch.equal(back.nulls[(ENTROPY, 4)], reference.nulls[(ENTROPY, 4)].float())


def _run(gate: ShiftGate, frames: list[EarlyStats], entropy: float = 1.0) -> list[str]:
    return [e for e in (gate.observe(f, entropy) for f in frames) if e is not None]


def test_the_gate_opens_on_a_shift_notices_a_change_and_closes_on_clean() -> None:
    gate = ShiftGate(_reference(), GateConfig(window=16, hop=4, dwell=2, close_window=8))
    clean = [_frame(1.0, 100 + i) for i in range(64)]
    assert _run(gate, clean) == [] and not gate.adapting          # clean: source model
    low = [_frame(0.2, 200 + i, shift=0.5) for i in range(48)]
    # opened once the window holds enough shifted frames; settled a window later
    assert _run(gate, low) == [OPENED, SETTLED] and gate.adapting
    assert gate.key() is not None and gate.frames_adapting > 0
    # another shift: the scene variances of two windows differ beyond what content explains
    high = [_frame(4.0, 300 + i) for i in range(48)]
    assert _run(gate, high)[:2] == [CHANGED, SETTLED] and gate.changes == 1
    # clean frames until it closes (a change may be noticed on the way, while the window
    # mixes both)
    events = []
    for frame in clean:
        events.append(gate.observe(frame, 1.0))
        if events[-1] == CLOSED:
            break
    assert events[-1] == CLOSED and not gate.adapting
    # the shift right back (it looked clean for a moment): resumed, not a new opening
    assert _run(gate, high)[:1] == [RESUMED] and gate.openings == 1
    gate.reset()
    assert not gate.adapting and gate.openings == 0


def test_clean_frames_after_a_shift_get_the_source_model_before_the_gate_closes() -> None:
    """The newest fast_window frames look clean: the source model classifies at the next test
    (the gate still open), a closing window later the gate closes; without fast_source the
    adapted state classifies until the close."""
    def back_to_clean(fast_source: bool) -> list[tuple[str | None, bool, bool]]:
        gate = ShiftGate(_reference(), GateConfig(window=16, hop=4, dwell=2, close_window=8,
                                                  fast_window=4, fast_source=fast_source))
        _run(gate, [_frame(1.0, 100 + i) for i in range(64)])
        assert _run(gate, [_frame(0.2, 200 + i, shift=0.5) for i in range(48)]) == [
            OPENED, SETTLED] and gate.adapting
        return [(gate.observe(_frame(1.0, 400 + i), 1.0), gate.adapting, gate.open)
                for i in range(12)]

    trace = back_to_clean(True)
    first_source = next(i for i, (_, adapting, _) in enumerate(trace) if not adapting)
    closed = next(i for i, (event, _, _) in enumerate(trace) if event == CLOSED)
    assert first_source == 4 and trace[first_source][2]    # 4 clean frames: source, still open
    assert closed == 8 and not trace[closed][2]
    assert all(not adapting for _, adapting, _ in trace[first_source:])
    trace = back_to_clean(False)
    assert next(i for i, (_, adapting, _) in enumerate(trace) if not adapting) == closed


def test_a_frame_nearer_the_clean_reference_than_the_window_gets_the_source_model() -> None:
    gate = ShiftGate(_reference(), GateConfig(window=16, hop=4, dwell=2, close_window=8))
    clean = [_frame(1.0, 600 + i) for i in range(40)]
    low = [_frame(0.2, 700 + i, shift=0.5) for i in range(40)]
    _run(gate, clean[:32])
    assert not gate.nearer_source(clean[32])             # closed: nothing to decide
    assert _run(gate, low[:20])[:1] == [OPENED] and gate.adapting and gate.stem_sees
    assert gate.nearer_source(clean[33]) and not gate.nearer_source(low[20])
    # a rested frame counts as the source model's (resting, not adapting)
    adapting, resting = gate.frames_adapting, gate.frames_resting
    gate.observe(clean[34], 1.0, rested=True)
    assert (gate.frames_adapting, gate.frames_resting) == (adapting, resting + 1)
    off = ShiftGate(_reference(), GateConfig(window=16, hop=4, dwell=2, close_window=8,
                                             frame_source=False))
    _run(off, clean[:32] + low[:20])
    assert off.adapting and not off.nearer_source(clean[33])


def test_a_typical_clean_frame_is_told_from_a_shifted_one_by_the_one_photo_null() -> None:
    reference = _reference()
    gate = ShiftGate(reference)
    assert gate.frame_threshold == reference.threshold(STEM, 1, 0.1)
    clean = [_frame(1.0, 800 + i) for i in range(100)]
    typical = sum(gate.looks_typical(f) for f in clean)
    assert 75 <= typical <= 100                     # about the 90th percentile of clean frames
    assert not any(gate.looks_typical(_frame(0.2, 900 + i, shift=0.5)) for i in range(20))
    # a pack calibrated before the 1-photo null: no per-frame typicality at all
    older = ShiftReference(reference.stem_mean, reference.stem_var,
                           {k: v for k, v in reference.nulls.items() if k[1] > 1}, 256)
    old_gate = ShiftGate(older)
    assert old_gate.frame_threshold is None and not old_gate.looks_typical(clean[0])


def test_the_fast_key_is_given_only_for_frames_that_look_shifted() -> None:
    gate = ShiftGate(_reference(), GateConfig(window=16, hop=4, dwell=2, close_window=8,
                                              fast_window=4))
    clean = [_frame(1.0, 400 + i) for i in range(32)]
    _run(gate, clean)
    assert gate.fast_key() is None                 # clean frames: nothing to look up
    low = [_frame(0.2, 500 + i, shift=0.5) for i in range(12)]
    assert _run(gate, low[:4]) == [OPENED]
    assert gate.fast_key() is None                 # at the opening: may mix in clean frames
    _run(gate, low[4:8])
    mean, var = gate.fast_key()                    # four since, and they alone look shifted
    assert torch.allclose(mean, torch.stack([f.mean.double() for f in low[4:8]]).mean(dim=0))
    assert torch.allclose(var, torch.stack([f.var.double() for f in low[4:8]]).mean(dim=0))


def test_an_entropy_shift_opens_and_is_probed() -> None:
    gate = ShiftGate(_reference(), GateConfig(window=16, hop=4, dwell=2, close_window=8,
                                              probe_every=32))
    clean = [_frame(1.0, 300 + i) for i in range(200)]
    assert _run(gate, clean[:32], entropy=1.05) == []
    # the stem sees nothing, the source model is lost: opened by the entropy test
    assert _run(gate, clean[32:48], entropy=5.0) == [OPENED]
    assert gate.summary()["reason"] == ENTROPY and gate.adapting and not gate.stem_sees
    # the stem cannot say when it ends: after probe_every frames a probe window runs on the
    # source model; still lost -> resumed, confident again -> closed
    assert _run(gate, clean[48:100], entropy=5.0) == [SETTLED, PROBE, RESUMED]
    assert _run(gate, clean[100:180], entropy=1.0) == [SETTLED, PROBE, CLOSED]
    assert not gate.adapting


# ---- ZOA behind the gate, on the real EfficientNet-Lite0 and the bundled photos -------------

@pytest.fixture(scope="module")
def lite0(photo_dir):
    """An fp32 EfficientNet-Lite0 pack calibrated on the 24 photos, their crops (each photo's
    position in the sorted list) and the model's own clean predictions as labels."""
    pack = build_pack(ModelSpec("tf_efficientnet_lite0", "efficientnet-lite0"),
                      QuantConfig.parse("none"), find_images(photo_dir), num_images=8,
                      progress=False)
    pre = Preprocessor(pack.data_config)
    crops = [pre.crop(read_rgb(p)) for p in find_images(photo_dir)]
    engine = Engine(pack, EngineConfig(method="none", top_k=1))
    labels = [p.class_index for p in engine.predict(np.stack(crops))]
    engine.close()
    return pack, crops, labels


def _evaluate(lite0, schedule: str, **zoa: object) -> dict:
    pack, crops, labels = lite0
    stream = CorruptionStream(crops, labels, range(len(crops)), visits=parse_schedule(schedule),
                              stream_order=StreamOrder.parse("class-sorted"), dwell=4, seed=0)
    return evaluate(pack, stream, ["none", "zoa"], mode="streaming", batch_size=32,
                    method_configs={"zoa": zoa}, progress=False)


def test_a_long_clean_stream_keeps_the_source_predictions(lite0) -> None:
    result = _evaluate(lite0, "clean:480")
    zoa = result["methods"]["zoa"]
    assert zoa["mean_agreement"] >= 99.0          # the bar: >= 99 % equal to none
    assert zoa["gate"]["openings"] == 0 and zoa["domains"][0]["adapting"] == 0.0
    assert zoa["costs"]["adapt_steps"] == 0 and zoa["costs"]["forward_per_frame"] == 1.0


def test_a_strong_shift_still_opens_the_gate_and_gains(lite0) -> None:
    result = _evaluate(lite0, "clean:96,contrast@5:192")
    none, zoa = result["methods"]["none"], result["methods"]["zoa"]
    clean, contrast = zoa["domains"]
    assert clean["agreement"] == 100.0 and clean["adapting"] == 0.0
    # most of its frames adapted (a few nearer the clean reference than the window rest)
    assert zoa["gate"]["openings"] >= 1 and contrast["adapting"] > 60.0
    assert zoa["costs"]["adapt_steps"] > 0
    # 24 photos held 4 frames: the stem-scaled trust gains 3.6 points here (15 frames right
    # against 8), the fixed prior 7.8; a gain of a few frames is what this test can ask for
    assert contrast["acc"] >= none["domains"][1]["acc"] + 2.0
    # it confuses the source model: the deep BatchNorms trust the test statistics too
    assert contrast["deep_trust"] > 0.0


def test_a_shift_only_the_entropy_shows_trusts_test_statistics(lite0) -> None:
    """An elastic warp keeps the stem's statistics: the gate opens on the source model's
    entropy, and every layer trusts test statistics as far as the shift confuses the source
    model, not as far as the stem moved (not at all: the stem's ramp alone left the source
    statistics in every layer)."""
    result = _evaluate(lite0, "clean:32,elastic_transform@5:160")
    zoa = result["methods"]["zoa"]
    elastic = zoa["domains"][1]
    assert zoa["gate"]["openings"] >= 1 and zoa["gate"]["reason"] == "entropy"
    assert elastic["adapting"] > 0.0 and elastic["deep_trust"] > 0.0
    assert elastic["source_share"] < 1.0


def test_a_shift_the_model_shrugs_off_keeps_the_source_model(lite0) -> None:
    """Brightness opens the gate (the stem sees it over a window) but a few frames of it look
    like clean ones: the source model classifies them (the gate rests). Without that, the steps
    measure no harm, and the deep half of the BatchNorms keeps the source statistics."""
    result = _evaluate(lite0, "clean:32,brightness@5:160")
    zoa = result["methods"]["zoa"]
    bright = zoa["domains"][1]
    assert zoa["gate"]["openings"] >= 1 and zoa["gate"]["frames_resting"] >= 32
    assert bright["adapting"] < 10.0 and bright["agreement"] == 100.0

    result = _evaluate(lite0, "clean:32,brightness@5:160", gate_fast_source=False,
                       gate_frame_source=False, gate_typical_source=False)
    zoa = result["methods"]["zoa"]
    bright = zoa["domains"][1]
    assert zoa["gate"]["openings"] >= 1 and bright["adapting"] > 0.0
    assert zoa["gate"]["frames_resting"] == 0 and zoa["costs"]["adapt_steps"] > 0
    assert bright["deep_trust"] == 0.0


def test_a_typical_frame_waits_for_a_step_to_measure_the_source_model(lite0, monkeypatch) -> None:
    """The typical-frame rule alone (the other rests off): brightness@5 opens the gate, and a
    frame of it as close to clean as a typical photo goes to the source model only once a step
    of the domain has measured the source model confident (deep trust 0); before that step it
    is classified adapted, since a noise domain's single frames can look as typical."""
    calls: list[tuple[bool, bool, bool]] = []   # (typical asked, looks typical, rested)
    nearer_source = ShiftGate.nearer_source

    def recorded(gate: ShiftGate, stem: EarlyStats, typical: bool = False) -> bool:
        rested = nearer_source(gate, stem, typical=typical)
        calls.append((typical, gate.looks_typical(stem), rested))
        return rested

    monkeypatch.setattr(ShiftGate, "nearer_source", recorded)
    zoa = _evaluate(lite0, "clean:32,brightness@5:160", gate_fast_source=False,
                    gate_frame_source=False)["methods"]["zoa"]
    assert zoa["costs"]["adapt_steps"] > 0 and zoa["domains"][1]["deep_trust"] == 0.0
    waited = calls[:next(i for i, (typical, _, _) in enumerate(calls) if typical)]
    assert waited and not any(rested for _, _, rested in waited)
    assert any(looks for _, looks, _ in waited)   # typical-looking frames that had to wait
    after = calls[len(waited):]
    assert all(typical for typical, _, _ in after)
    assert all(rested == looks for _, looks, rested in after)
    assert any(rested for _, _, rested in after)


def test_the_deep_trust_is_measured_on_the_current_domain_only() -> None:
    assert measured_frames(64, 8).tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    assert measured_frames(64, 8, current=16).tolist() == [48, 50, 52, 54, 57, 59, 61, 63]
    assert measured_frames(64, 8, current=5).tolist() == [59, 60, 61, 62, 63]
    assert measured_frames(64, 8, current=3) is None      # the previous domain would decide
    assert measured_frames(64, 8, current=500).tolist() == measured_frames(64, 8).tolist()


@pytest.mark.parametrize("early", [True, False])
def test_a_new_domain_is_measured_from_its_first_frames(lite0, monkeypatch, early: bool) -> None:
    """``early_measure``: once twice the gate's fast window (16 frames) of the domain it opened
    on are in, a step runs before the engine's interval (96 frames here; the gate opens ~20
    frames into contrast) is up, and measures the source model on them; without it the first
    step comes at the interval."""
    first: list[tuple[int, int]] = []   # (frames classified, of them since the opening)
    adapt = ZOA.adapt

    def recorded(zoa: ZOA, x: torch.Tensor, cached: object = None) -> object:
        gate = zoa.gate
        if gate.openings and not first:
            first.append((zoa.costs.frames_predicted, gate.frames_adapting + gate.frames_resting))
        return adapt(zoa, x, cached)

    monkeypatch.setattr(ZOA, "adapt", recorded)
    pack, crops, labels = lite0
    stream = CorruptionStream(crops, labels, range(len(crops)),
                              visits=parse_schedule("clean:32,contrast@5:96"),
                              stream_order=StreamOrder.parse("class-sorted"), dwell=4, seed=0)
    zoa = evaluate(pack, stream, ["zoa"], mode="streaming", batch_size=96,
                   method_configs={"zoa": {"early_measure": early}},
                   progress=False)["methods"]["zoa"]
    assert zoa["gate"]["openings"] == 1 and first
    (frames, since_opening), = first
    if early:
        assert 16 <= since_opening <= 17 and frames < 96, first
        # measured on contrast's frames alone: it confuses the source model
        assert zoa["domains"][1]["deep_trust"] > 0.0
    else:
        assert frames == 96 and since_opening > 17, first


def test_clean_frames_after_a_strong_shift_get_the_source_model_from_the_first(lite0) -> None:
    """Each clean frame after contrast@5 is nearer the clean reference than the gate's newest
    frames of contrast: the source model classifies it, before any window or test says the shift
    ended. Without that (``gate_frame_source`` off) the first ones are classified adapted."""
    schedule = "clean:32,contrast@5:96,clean:64"
    last = _evaluate(lite0, schedule)["methods"]["zoa"]["domains"][-1]
    assert last["adapting"] == 0.0 and last["agreement"] == 100.0
    last = _evaluate(lite0, schedule, gate_frame_source=False)["methods"]["zoa"]["domains"][-1]
    assert last["adapting"] > 0.0


def test_a_remembered_domain_is_recalled_before_a_window_of_it_is_in(lite0) -> None:
    """contrast -> fog -> contrast: the change to fog stores contrast's statistics; back on
    contrast, the newest few frames find them (early) and the settled window confirms it."""
    result = _evaluate(lite0, "clean:32,contrast@5:96,fog@5:96,contrast@5:96")
    zoa = result["methods"]["zoa"]
    assert zoa["gate"]["changes"] >= 2 and zoa["bank"]["recall_entries"] >= 1
    assert zoa["bank"]["recall_early"] >= 1 and zoa["bank"]["recall_undone"] == 0

