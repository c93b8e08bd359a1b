"""zoa_node's adaptation worker with a real streaming ZOA engine: a reset, bank load or save
(``AdaptationWorker.control``) abandons a running step instead of waiting for it, and gives
up with ``ControlBusy``, saying why, when the step cannot let go."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from zoa_ros.core.engine import Engine
from zoa_ros.ros.adaptation_worker import AdaptationWorker, ControlBusy


class _Log:
    """Takes the node logger's calls (rclpy's loggers take ``throttle_duration_sec``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _line(self, message: str, **_options: object) -> None:
        self.lines.append(message)

    debug = info = warning = error = _line


@pytest.fixture(scope="module")
def pack(make_pack):
    return make_pack("test_resnet")[0]


def _engine(pack) -> Engine:
    """Streaming ZOA that waits up to 30 s before each layer while a frame is in flight, with
    16 observed frames: a step is due."""
    engine = Engine(pack, method="zoa", mode="streaming", batch_size=16, max_pause_s=30.0,
                    method_config={"bn_stats": "running", "min_adapt_batch": 16,
                                   "detect_min_batch": 16, "no_harm": False})
    _observe(engine, 16)
    return engine


def _observe(engine: Engine, frames: int) -> None:
    x = torch.randn(frames, *engine.pack.data_config["input_size"],
                    generator=torch.Generator().manual_seed(frames))
    for i in range(frames):
        engine.predict(x[i:i + 1], observe=True)


def _wait(condition, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_control_abandons_a_running_step_instead_of_waiting_for_it(pack) -> None:
    engine, lock = _engine(pack), threading.Lock()
    worker = AdaptationWorker(lock, _Log(), lambda: (1, False, 0))
    until = threading.Event()
    thread = threading.Thread(target=worker.run, args=(until,))
    thread.start()
    try:
        with engine._first.predicting():      # a frame in flight: the step parks at a layer
            worker.start(engine)
            assert _wait(lock.locked)
            time.sleep(0.5)
            assert lock.locked() and engine.stats().adapt_steps == 0   # parked, holding it
            start = time.monotonic()
            with worker.control(timeout=20.0):
                waited = time.monotonic() - start
                assert engine.stats().adapt_steps == 0                 # abandoned, undone
        assert waited < 5.0       # not the 30 s per layer the parked step would have waited
        _observe(engine, 16)      # the abandoned step had taken the buffered frames
        worker.wake()
        assert _wait(lambda: engine.stats().adapt_steps == 1)          # steps run again
    finally:
        until.set()
        worker.interrupt()
        thread.join(60)
    assert not thread.is_alive() and worker.errors == 0
    engine.close()


def test_a_control_gives_up_on_a_step_that_cannot_let_go(pack) -> None:
    engine, lock = _engine(pack), threading.Lock()
    worker = AdaptationWorker(lock, _Log(), lambda: (1, False, 0))
    worker.start(engine)
    with lock:                    # what a step holds that gets no CPU on saturated CPUs
        start = time.monotonic()
        with pytest.raises(ControlBusy, match="idle priority"), worker.control(timeout=1.0):
            pass
        assert 0.9 <= time.monotonic() - start < 10.0
    with worker.control(timeout=1.0):    # once it lets go
        pass
    assert engine.maybe_adapt(force=True) is not None   # and steps are not left abandoned
    engine.close()
