"""Image messages -> numpy arrays (re-exported from :mod:`zoa_ros.core.data.image_messages`, shared
with the bag replay) and the node's result messages.

Messages are duck-typed (no rclpy import), so all of this is testable without ROS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from zoa_ros.core.data.image_messages import (  # noqa: F401  (the node's conversion API)
    COMPRESSED_FORMATS,
    RAW_ENCODINGS,
    MalformedMessage,
    check_compressed,
    check_image,
    compressed_to_array,
    image_to_array,
    to_array,
)


def result_dict(header: Any, camera: str, top: Sequence[Any], inference_ms: float,
                adaptation_steps: int, bank_entries: int, domain: int | None,
                inference_cpu_ms: float = 0.0, queued_ms: float = 0.0) -> dict:
    """The ``classification_json`` document for one frame (source header, top-k results).
    ``inference_cpu_ms``: the CPU time of the classifying thread within ``inference_ms``; the
    difference is time it waited (preempted, or for the GIL or a lock). ``queued_ms``: from the
    frame's arrival in its subscription callback to the start of its classification (the
    hand-off to the inference thread, and waiting there while the model was busy)."""
    return {
        "stamp": {"sec": int(header.stamp.sec), "nanosec": int(header.stamp.nanosec)},
        "frame_id": str(header.frame_id),
        "camera": camera,
        "results": [{"class_index": int(s.class_index), "label": str(s.label),
                     "score": float(s.score)} for s in top],
        "inference_ms": float(inference_ms),
        "inference_cpu_ms": float(inference_cpu_ms),
        "queued_ms": float(queued_ms),
        "adaptation_steps": int(adaptation_steps),
        "bank_entries": int(bank_entries),
        "domain": int(domain or 0),
    }


def result_json(*args: Any, **kwargs: Any) -> str:
    return json.dumps(result_dict(*args, **kwargs), separators=(",", ":"))


def vision_classification(classification_cls: type, hypothesis_cls: type, header: Any,
                          top: Sequence[Any]) -> Any:
    """A vision_msgs/Classification: the source header and one ObjectHypothesis per top-k
    class (``class_id`` = the class index as a string; names are on ``~/labels``)."""
    msg = classification_cls()
    msg.header = header
    msg.results = [hypothesis_cls(class_id=str(int(s.class_index)), score=float(s.score))
                   for s in top]
    return msg
