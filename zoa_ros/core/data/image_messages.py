"""sensor_msgs Image / CompressedImage -> uint8 RGB (or grey) numpy arrays, without ROS.

Raw images are converted with numpy, not cv_bridge: measured with cv-bridge 1.13.0.post0,
``imgmsg_to_cv2`` ignores row padding (``step > width * channels``) and returns wrong pixels,
while ``np.frombuffer`` + a strided view is exact, zero-copy and handles every encoding below.
Compressed images are decoded with OpenCV (what cv_bridge's ``compressed_imgmsg_to_cv2`` does).

Every malformed message raises :class:`MalformedMessage` with the reason. :func:`check_image` /
:func:`check_compressed` are the cheap header checks (no pixel decoding). Messages are
duck-typed: rclpy message objects and the ``rosbags`` classes the bag reader deserializes both
work, so the node and the bag replay convert frames with the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# encoding -> (channels, index of R, G, B in the pixel; None = grey)
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class MalformedMessage(ValueError):
    """An image message that cannot be converted; the text says why."""


def check_image(msg: Any) -> int:
    """Validate a sensor_msgs/Image header against its data; returns the channel count."""
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise MalformedMessage(f"unsupported encoding {msg.encoding!r} "
                               f"(supported: {', '.join(RAW_ENCODINGS)})")
    channels = RAW_ENCODINGS[encoding][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    size = len(msg.data)
    if size == 0:
        raise MalformedMessage("empty data")
    if height <= 0 or width <= 0:
        raise MalformedMessage(f"bad size {width}x{height}")
    if step < width * channels:
        raise MalformedMessage(f"step {step} < width {width} x {channels} channels")
    if size != step * height:
        raise MalformedMessage(f"data has {size} bytes, step x height = {step * height}")
    return channels


def image_to_array(msg: Any) -> np.ndarray:
    """uint8 HxWx3 RGB (or HxW for mono8), contiguous, from a sensor_msgs/Image."""
    channels = check_image(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    rows = np.frombuffer(msg.data, np.uint8).reshape(height, step)
    pixels = rows[:, :width * channels].reshape(height, width, channels)
    order = RAW_ENCODINGS[str(msg.encoding).lower()][1]
    if order is None:
        return np.ascontiguousarray(pixels[:, :, 0])
    if order == (0, 1, 2):
        return np.ascontiguousarray(pixels[:, :, :3])
    return np.ascontiguousarray(pixels[:, :, list(order)])


def check_compressed(msg: Any) -> None:
    """Validate a sensor_msgs/CompressedImage's format and data (not the decode)."""
    fmt = str(msg.format).lower()
    if fmt and not any(name in fmt for name in COMPRESSED_FORMATS):
        raise MalformedMessage(f"unsupported compressed format {msg.format!r} "
                               f"(supported: {', '.join(COMPRESSED_FORMATS)})")
    if len(msg.data) == 0:
        raise MalformedMessage("empty data")


def compressed_to_array(msg: Any) -> np.ndarray:
    """uint8 HxWx3 RGB from a JPEG/PNG sensor_msgs/CompressedImage."""
    import cv2

    check_compressed(msg)
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise MalformedMessage(
            f"could not decode {len(msg.data)} bytes as {msg.format or 'an image'}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def to_array(msg: Any, kind: str) -> np.ndarray:
    """Dispatch on ``kind`` ("raw" / "compressed")."""
    return compressed_to_array(msg) if kind == "compressed" else image_to_array(msg)
