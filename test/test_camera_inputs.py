"""``CameraInputs`` with the real rclpy and DDS in this process: its own thread takes every
frame, survives a failing callback, serves rclpy's QoS events and stops at once on close."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from zoa_ros.ros.camera_inputs import CameraInputs

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:lark"),
              # rclpy's own incompatible-QoS warning calls its deprecated logger.warn
              pytest.mark.filterwarnings("ignore::DeprecationWarning:rclpy.event_handler")]

DOMAIN = 60 + os.getpid() % 40
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
TOPIC = "zoa_test_camera_inputs"


class _Rig:
    """CameraInputs on an owner node, subscribed to TOPIC; a camera node to publish from."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=DOMAIN)
        self.owner = rclpy.create_node("zoa_node", context=self.context)
        self.camera = rclpy.create_node("camera", context=self.context)
        self.inputs = CameraInputs(self.owner)
        self.got: list[tuple[str, str]] = []   # (data, thread name) per callback
        self.lock = threading.Lock()

    def callback(self, msg: String) -> None:
        with self.lock:
            self.got.append((msg.data, threading.current_thread().name))
        if msg.data == "fail":
            raise RuntimeError("a callback that fails")

    def close(self) -> None:
        self.inputs.close()
        self.camera.destroy_node()
        self.owner.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def rig():
    rig = _Rig()
    try:
        yield rig
    finally:
        rig.close()


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def test_every_frame_reaches_the_callback_on_the_inputs_thread(rig: _Rig) -> None:
    rig.inputs.subscribe(String, TOPIC, rig.callback, RELIABLE)
    publisher = rig.camera.create_publisher(String, TOPIC, RELIABLE)
    rig.inputs.start()
    _until(lambda: publisher.get_subscription_count() > 0, 30.0, "discovery")
    sent = ["a", "fail", "b", *map(str, range(20))]
    for data in sent:
        publisher.publish(String(data=data))
    _until(lambda: len(rig.got) == len(sent), 10.0, f"{len(sent)} frames, got {rig.got}")
    assert [data for data, _ in rig.got] == sent   # the failing callback stopped nothing
    assert {name for _, name in rig.got} == {"zoa_camera_inputs"}


def test_close_ends_the_wait_at_once_and_twice_is_harmless(rig: _Rig) -> None:
    rig.inputs.subscribe(String, TOPIC, rig.callback, RELIABLE)
    rig.inputs.start()
    time.sleep(0.1)   # the thread is waiting now
    started = time.monotonic()
    rig.inputs.close()
    assert time.monotonic() - started < 0.4   # woken, not timed out (the wait is 0.5 s)
    assert not any(t.name == "zoa_camera_inputs" for t in threading.enumerate())
    rig.inputs.close()


def test_qos_events_are_served(rig: _Rig, capfd: pytest.CaptureFixture[str]) -> None:
    """rclpy's own warning about a publisher whose QoS cannot reach the subscription."""
    rig.inputs.subscribe(String, TOPIC, rig.callback, RELIABLE)
    rig.inputs.start()
    best_effort = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    rig.camera.create_publisher(String, TOPIC, best_effort)
    seen = ""

    def warned() -> bool:
        nonlocal seen
        seen += capfd.readouterr().err
        return "incompatible QoS" in seen

    _until(warned, 30.0, "rclpy's incompatible-QoS warning")
    assert "zoa_node_input" in seen
