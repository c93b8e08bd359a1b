"""A virtual camera: publishes real photos through a scripted schedule of domains.

Stands in for a camera driver in the demo and the node benchmark. Frames are precomputed (photo x
domain, corrupted with :mod:`zoa_ros.core.data.corruptions`) and turned into messages once, so
publishing keeps the rate and a frame's stamp is taken just before it goes out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from zoa_ros.core.data.corruptions import ALL_NAMES, corrupt, derive_seed


@dataclass(frozen=True)
class Phase:
    domain: str
    seconds: float


def parse_schedule(spec: str) -> list[Phase]:
    """``"clean:10,fog:15,clean:5"`` -> phases (domain names from the corruption library)."""
    phases = []
    for item in spec.split(","):
        name, _, seconds = item.strip().partition(":")
        if name not in ALL_NAMES:
            raise ValueError(f"unknown domain {name!r} in schedule; choose from {ALL_NAMES}")
        try:
            duration = float(seconds)
        except ValueError:
            raise ValueError(f"schedule item {item!r}: expected NAME:SECONDS") from None
        if duration <= 0:
            raise ValueError(f"schedule item {item!r}: duration must be > 0")
        phases.append(Phase(name, duration))
    if not phases:
        raise ValueError("empty schedule")
    return phases


def render_frames(photos: list[np.ndarray], domains: set[str], size: tuple[int, int],
                  severity: int, seed: int = 0) -> dict[tuple[str, int], np.ndarray]:
    """Every photo resized to ``size`` (w, h) under every domain, as uint8 RGB."""
    frames = {}
    for i, photo in enumerate(photos):
        base = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
        for domain in sorted(domains):
            frames[(domain, i)] = base if domain == "clean" else corrupt(
                base, domain, severity, derive_seed(seed, domain, i))
    return frames


class VirtualCamera(Node):
    """Publishes rgb8 ``sensor_msgs/Image`` frames with sensor-data QoS."""

    def __init__(self, topic: str = "image", frame_id: str = "camera",
                 name: str = "virtual_camera") -> None:
        super().__init__(name)
        self.frame_id = frame_id
        self.publisher = self.create_publisher(Image, topic, qos_profile_sensor_data)

    def message(self, frame: np.ndarray) -> Image:
        """``frame`` (uint8 RGB, H x W x 3) as an rgb8 ``Image``, built once, stamped by
        :meth:`publish` every time it goes out."""
        msg = Image()
        msg.header.frame_id = self.frame_id
        msg.height, msg.width = frame.shape[:2]
        msg.encoding = "rgb8"
        msg.step = frame.shape[1] * 3
        msg.data = np.ascontiguousarray(frame).tobytes()  # fast path (see environment notes)
        return msg

    def publish(self, msg: Image) -> tuple[int, int]:
        """Stamp ``msg`` now and publish it; returns the stamp as (sec, nanosec).

        The message is built beforehand (:meth:`message`), so the stamp is taken just before it
        goes out and a subscriber's latency from the stamp holds no copying of pixels here.
        """
        msg.header.stamp = self.get_clock().now().to_msg()
        self.publisher.publish(msg)
        return msg.header.stamp.sec, msg.header.stamp.nanosec
