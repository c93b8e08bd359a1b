"""The frames of a recording's camera topic, read one by one by position: clean images for
calibrating a pack from a rosbag2 recording (``zoa-ros calibrate --images BAG``).

The topic is indexed once (:class:`~zoa_ros.core.data.bags.stream.BagStream`: header checks,
malformed messages counted and left out); :meth:`BagFrames.read` then decodes the frame at a
position. Reads go forward through the recording with one open reader; asking for a position
before the last one read opens the recording again, so a caller that reads its picks in
recording order (calibration reads them twice: quantizer ranges, then source statistics)
passes over the file once per round and holds only the frames it is working on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zoa_ros.core.data.bags.files import RawMessage, messages, open_bag
from zoa_ros.core.data.bags.stream import BagStream, seek
from zoa_ros.core.data.image_messages import to_array

BAG_SUFFIXES = (".mcap", ".db3")


def is_bag(path: str | Path) -> bool:
    """A rosbag2 recording: a folder with ``metadata.yaml``, or a ``.mcap`` / ``.db3`` file."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix.lower() in BAG_SUFFIXES


class BagFrames:
    """The usable frames of ``image_topic`` (default: the recording's only image topic)."""

    def __init__(self, path: str | Path, image_topic: str | None = None) -> None:
        stream = BagStream(path, image_topic=image_topic, label_topic=None)
        self.path, self.image_topic, self.kind = stream.path, stream.image_topic, stream.kind
        self.positions = [f.position for f in stream.planned_frames()]
        self.malformed = sum(stream.malformed.values())
        self._stack: contextlib.ExitStack | None = None
        self._reader: Any = None
        self._messages: Iterator[tuple[int, RawMessage]] | None = None
        self._last = -1

    def read(self, position: int) -> np.ndarray:
        """The frame at ``position`` (an entry of :attr:`positions`) as uint8 RGB (or grey)."""
        if self._messages is None or position <= self._last:
            self.close()
            self._stack = contextlib.ExitStack()
            self._reader = self._stack.enter_context(open_bag(self.path))
            self._messages = enumerate(messages(self._reader, {self.image_topic}, self.path))
        msg = seek(self._messages, position, self.path)
        self._last = position
        return to_array(self._reader.deserialize(msg.rawdata, msg.msgtype), self.kind)

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._reader = self._messages = None
        self._last = -1

    def __enter__(self) -> BagFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
