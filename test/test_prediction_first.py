"""Classification first: an adaptation step on another thread yields to predictions in flight,
for at most max_pause_s per layer; predictions never wait."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from zoa_ros.core.adapt.bn_stats import BatchNormStats
from zoa_ros.core.adapt.fused_norm import FusedBatchNorm
from zoa_ros.core.engine import Engine
from zoa_ros.core.runtime.prediction_first import PredictionFirst


@pytest.fixture(scope="module")
def pack(make_pack):
    return make_pack("test_resnet")[0]


def _fused(pack) -> torch.nn.Module:
    """The pack's model with its BatchNorms replaced by the fused layers that yield."""
    model = pack.build_model().eval()
    BatchNormStats(model)
    return model


def _adapter(gate: PredictionFirst, model: torch.nn.Module, x: torch.Tensor,
             finished: threading.Event) -> threading.Thread:
    def run() -> None:
        with torch.no_grad(), gate.adapting():
            model(x)
        finished.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_step_waits_for_the_prediction_in_flight_which_never_waits(pack) -> None:
    model = _fused(pack)
    gate = PredictionFirst(max_pause_s=30.0)
    x = torch.randn(4, *pack.data_config["input_size"])
    finished = threading.Event()
    with gate.predicting():
        thread = _adapter(gate, model, x, finished)
        with torch.no_grad():
            start = time.perf_counter()
            model(x[:1])                       # the prediction itself: no waiting
            predict_s = time.perf_counter() - start
        assert not finished.wait(0.5)          # the step is parked before a layer
    assert finished.wait(30)                   # and goes on once the prediction is done
    thread.join()
    assert predict_s < 0.5
    assert gate.pauses >= 1 and gate.paused_s >= 0.4


def test_a_busy_camera_slows_a_step_down_but_never_stops_it(pack) -> None:
    model = _fused(pack)
    gate = PredictionFirst(max_pause_s=0.002)
    x = torch.randn(2, *pack.data_config["input_size"])
    finished = threading.Event()
    with gate.predicting():                    # a prediction in flight the whole time
        thread = _adapter(gate, model, x, finished)
        assert finished.wait(30)
    thread.join()
    layers = sum(1 for m in model.modules() if isinstance(m, FusedBatchNorm))
    assert layers > 0 and gate.pauses == layers   # one bounded wait per layer
    with torch.no_grad(), gate.adapting():
        model(x)                               # no prediction in flight: no wait
    assert gate.pauses == layers
    off = PredictionFirst(max_pause_s=0.0)
    with off.predicting(), torch.no_grad(), off.adapting():
        model(x)                               # a gate with no pause never waits
    assert off.pauses == 0


def test_engine_streams_zoa_with_yielding_steps(pack, steps_in_background) -> None:
    """The real ZOA in streaming mode, predictions on this thread, steps on another: no
    deadlock, finite results, and the steps did yield."""
    # no_harm off: the shift gate would skip a forced step whenever the noise frames, observed
    # while the steps run, close it; this test is about the steps yielding, not the gate
    eng = Engine(pack, method="zoa", mode="streaming", batch_size=16, max_pause_s=0.05,
                 method_config={"bn_stats": "running", "min_adapt_batch": 16,
                                "detect_min_batch": 16, "no_harm": False})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, *pack.data_config["input_size"], generator=g)
    for i in range(16):
        eng.predict(x[i:i + 1], observe=True)
    steps = steps_in_background(eng, forced=3)
    count = 0
    while not steps.finished.is_set():
        pred = eng.predict(x[16 + count % 16:17 + count % 16], observe=True)[0]
        assert np.isfinite(pred.score)
        count += 1
    steps.thread.join()
    stats = eng.stats()
    eng.close()
    assert not steps.errors and stats.adapt_steps == 3
    assert stats.adapt_paused_s > 0 and count > 0


def test_only_a_positive_pause_and_a_method_that_can_pause_yield(pack) -> None:
    with pytest.raises(ValueError, match="max_pause_s"):
        Engine(pack, method="none", max_pause_s=-1.0)
    with pytest.raises(ValueError, match="max_pause_s"):
        PredictionFirst(-1.0)
    assert Engine(pack, method="zoa", max_pause_s=0.1)._first.enabled
    assert not Engine(pack, method="zoa", max_pause_s=0.0)._first.enabled
    # tent's predict waits for its adapt
    assert not Engine(pack, method="tent", max_pause_s=0.1)._first.enabled
