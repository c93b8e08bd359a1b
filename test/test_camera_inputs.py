"""``CameraInputs`` with the real rclpy and DDS in this process: who takes the frames."""

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

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lark")

DOMAIN = 60 + os.getpid() % 40
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
TOPIC = "zoa_test_camera_inputs"


@pytest.fixture
def inputs():
    """``(inputs, publish, got)``: CameraInputs on an owner node, subscribed to TOPIC; a
    publisher on another node; ``got`` lists (data, thread name) per callback."""
    context = Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    owner = rclpy.create_node("zoa_node", context=context)
    camera = rclpy.create_node("camera", context=context)
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def callback(msg: String) -> None:
        with lock:
            got.append((msg.data, threading.current_thread().name))

    cam_inputs = CameraInputs(owner)
    cam_inputs.subscribe(String, TOPIC, callback, RELIABLE)
    publisher = camera.create_publisher(String, TOPIC, RELIABLE)
    cam_inputs.start()
    try:
        yield cam_inputs, lambda data: publisher.publish(String(data=data)), got
    finally:
        cam_inputs.close()
        camera.destroy_node()
        owner.destroy_node()
        rclpy.shutdown(context=context)


def _until(condition: Callable[[], bool], step: Callable[[], None], timeout: float,
           what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        step()


def test_the_waiting_thread_takes_frames_and_another_while_it_computes(inputs) -> None:
    cam_inputs, publish, got = inputs
    me = threading.current_thread().name

    def receive() -> None:   # as the inference thread does while its slot is empty
        publish("idle")
        cam_inputs.receive(0.25, lambda: False)

    _until(lambda: bool(got), receive, 30.0, "a frame taken by the waiting thread")
    assert {name for data, name in got} == {me}   # no hand-off: the caller ran the callback

    with cam_inputs.computing():   # while it classifies, the inputs' own thread takes them
        publish("busy")
        _until(lambda: any(data == "busy" for data, _ in got), lambda: time.sleep(0.01),
               10.0, "a frame taken while computing")
    assert [name for data, name in got if data == "busy"] == ["zoa_camera_inputs"]

    started = time.monotonic()
    cam_inputs.receive(5.0, lambda: True)   # a frame already waits: no wait for another
    assert time.monotonic() - started < 1.0


def test_receive_returns_at_once_after_close(inputs) -> None:
    cam_inputs, _, _ = inputs
    cam_inputs.close()
    started = time.monotonic()
    cam_inputs.receive(5.0, lambda: False)
    assert time.monotonic() - started < 1.0
