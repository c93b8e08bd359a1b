"""sensor_msgs Image / CompressedImage -> uint8 RGB (or grey) numpy arrays, without ROS.

Raw images are converted with numpy, not cv_bridge: measured with cv-bridge 1.13.0.post0,
``imgmsg_to_cv2`` ignores row padding (``step > width * channels``) and returns wrong pixels,
while ``np.frombuffer`` + a strided view is exact, zero-copy and handles every encoding below.
Compressed images are decoded with OpenCV (what cv_bridge's ``compressed_imgmsg_to_cv2`` does),
after PIL has read their size from the JPEG or PNG header without decoding (OpenCV cannot):
a frame with more than ``max_pixels`` pixels (:data:`~zoa_ros.core.files.images.DEFAULT_MAX_PIXELS`
unless the caller says otherwise) is refused before anything allocates it, raw or compressed.

Every malformed message raises :class:`MalformedMessage` with the reason. :func:`check_image` /
:func:`check_compressed` are the cheap header checks (no pixel decoding). Messages are
duck-typed: rclpy message objects and the ``rosbags`` classes the bag reader deserializes both
work, so the node and the bag replay convert frames with the same code.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoa_ros.core.files.images import DEFAULT_MAX_PIXELS, check_pixels

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


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: sender-chosen text in a reason stays short."""
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_image(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Validate a sensor_msgs/Image header against its data and ``max_pixels``; returns the
    channel count."""
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise MalformedMessage(f"unsupported encoding {_short(msg.encoding)} "
                               f"(supported: {', '.join(RAW_ENCODINGS)})")
    channels = RAW_ENCODINGS[encoding][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    size = len(msg.data)
    if size == 0:
        raise MalformedMessage("empty data")
    try:
        check_pixels(width, height, max_pixels)
    except ValueError as e:
        raise MalformedMessage(str(e)) from None
    if step < width * channels:
        raise MalformedMessage(f"step {step} < width {width} x {channels} channels")
    if size != step * height:
        raise MalformedMessage(f"data has {size} bytes, step x height = {step * height}")
    return channels


def image_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB (or HxW for mono8), contiguous, from a sensor_msgs/Image."""
    channels = check_image(msg, max_pixels)
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
        raise MalformedMessage(f"unsupported compressed format {_short(msg.format)} "
                               f"(supported: {', '.join(COMPRESSED_FORMATS)})")
    if len(msg.data) == 0:
        raise MalformedMessage("empty data")


def compressed_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) from the JPEG or PNG header of ``data``, read by PIL without decoding
    the pixels; :class:`MalformedMessage` if it is neither or the header is broken."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
            return image.size
    except Image.DecompressionBombError as e:   # above PIL's own limit (179 Mpx)
        raise MalformedMessage(f"image header: {e}") from None
    except UnidentifiedImageError:
        raise MalformedMessage("data is neither JPEG nor PNG") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise MalformedMessage(f"broken JPEG or PNG header ({_short(e, 60)})") from None


def compressed_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB from a JPEG/PNG sensor_msgs/CompressedImage whose header claims at most
    ``max_pixels`` pixels."""
    import cv2

    check_compressed(msg)
    data = memoryview(msg.data)   # bytes, array.array (rclpy) or a numpy array (rosbags)
    try:
        check_pixels(*compressed_size(data), max_pixels)
    except MalformedMessage:
        raise
    except ValueError as e:
        raise MalformedMessage(str(e)) from None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise MalformedMessage(
            f"could not decode {len(msg.data)} bytes as {msg.format or 'an image'}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def to_array(msg: Any, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Dispatch on ``kind`` ("raw" / "compressed")."""
    return (compressed_to_array(msg, max_pixels) if kind == "compressed"
            else image_to_array(msg, max_pixels))
