"""Writing camera recordings as rosbag2 (MCAP or sqlite3, format version 9) with ``rosbags``.

:class:`BagWriter` writes uint8 RGB frames on a camera topic (``sensor_msgs/Image`` rgb8, or
``sensor_msgs/CompressedImage`` jpeg/png) and, for labelled frames, a ``std_msgs/String`` label
with the same header stamp (:func:`zoa_ros.core.data.bags.labels.label_json`). The message
definitions and type hashes are the ROS 2 Kilted ones rosbags ships.

Atomic: the bag is written into a temporary folder beside ``out`` and renamed into place only
when it is complete; an existing ``out`` is refused unless ``force``, and then replaced only
after the new bag is complete. A failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from zoa_ros.core.data.bags.files import COMPRESSED, IMAGE, STRING, typestore
from zoa_ros.core.data.bags.labels import label_json
from zoa_ros.core.files.atomic import fsync_dir

STORAGES = ("mcap", "sqlite3")
COMPRESSIONS = ("jpeg", "png")


def encode_compressed(frame: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """uint8 HxWx3 RGB -> JPEG / PNG bytes (OpenCV, as ``image_transport`` does)."""
    import cv2

    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]) if fmt == "jpeg" else \
        (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3])
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(frame[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"could not encode a {frame.shape} frame as {fmt}")
    return buf.tobytes()


class BagWriter:
    """``with BagWriter(out, ...) as bag: bag.write(frame, stamp_ns, class_index, domain)``."""

    def __init__(self, out: str | Path, *, storage: str = "mcap", image_topic: str,
                 label_topic: str | None, compressed: str | None = None,
                 jpeg_quality: int = 90, frame_id: str = "camera", force: bool = False,
                 custom_data: dict[str, str] | None = None) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if compressed is not None and compressed not in COMPRESSIONS:
            raise ValueError(f"compressed format must be one of {COMPRESSIONS}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError("jpeg quality must be in 1..100")
        if label_topic is not None and label_topic == image_topic:
            raise ValueError("the image and label topics must differ")
        self.out = Path(out)
        if self.out.exists() and not force:
            raise ValueError(f"{self.out} exists; pass --force to replace it")
        self.storage, self.image_topic, self.label_topic = storage, image_topic, label_topic
        self.compressed, self.jpeg_quality, self.frame_id = compressed, jpeg_quality, frame_id
        self.custom_data = dict(custom_data or {})
        self.frames = 0
        self._tmp: Path | None = None
        self._writer: Any = None

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial",
                                          dir=self.out.parent))
        self._store = typestore()
        types = self._store.types
        self._header = types["std_msgs/msg/Header"]
        self._time = types["builtin_interfaces/msg/Time"]
        self._image_type = COMPRESSED if self.compressed else IMAGE
        self._image_cls, self._string_cls = types[self._image_type], types[STRING]
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self._tmp / self.out.name, version=9, storage_plugin=plugin)
            for key, value in self.custom_data.items():
                self._writer.set_custom_data(key, value)
            self._writer.open()
            self._image_conn = self._writer.add_connection(
                self.image_topic, self._image_type, typestore=self._store)
            self._label_conn = None if self.label_topic is None else \
                self._writer.add_connection(self.label_topic, STRING, typestore=self._store)
        except BaseException:
            self._discard()
            raise
        return self

    def write(self, frame: np.ndarray, stamp: int, class_index: int | None = None,
              domain: str = "") -> None:
        """One uint8 HxWx3 RGB frame at header stamp ``stamp`` (ns; also the log time), and its
        label when the bag has a label topic."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 frame, got {frame.dtype} {frame.shape}")
        sec, nanosec = divmod(int(stamp), 1_000_000_000)
        header = self._header(stamp=self._time(sec=sec, nanosec=nanosec), frame_id=self.frame_id)
        if self.compressed:
            msg = self._image_cls(header=header, format=self.compressed, data=np.frombuffer(
                encode_compressed(frame, self.compressed, self.jpeg_quality), np.uint8))
        else:
            h, w = frame.shape[:2]
            msg = self._image_cls(header=header, height=h, width=w, encoding="rgb8",
                                  is_bigendian=0, step=w * 3,
                                  data=np.ascontiguousarray(frame).reshape(-1))
        self._writer.write(self._image_conn, int(stamp),
                           self._store.serialize_cdr(msg, self._image_type))
        if self._label_conn is not None:
            if class_index is None:
                raise ValueError("this bag has a label topic: every frame needs a class index")
            text = self._string_cls(data=label_json(stamp, class_index, domain))
            self._writer.write(self._label_conn, int(stamp),
                               self._store.serialize_cdr(text, STRING))
        self.frames += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._writer.close()
            self._writer = None
            _fsync_tree(self._tmp / self.out.name)
            self._replace()
        finally:
            self._discard()

    def _replace(self) -> None:
        """Move the finished bag to ``out``; an old ``out`` is first moved into the temporary
        folder, which is removed last."""
        assert self._tmp is not None
        if self.out.exists() or self.out.is_symlink():
            os.replace(self.out, self._tmp / "previous")
        os.replace(self._tmp / self.out.name, self.out)
        fsync_dir(self.out.parent)

    def _discard(self) -> None:
        if self._writer is not None:
            try:
                self._writer.abort()
            except Exception:
                pass
            self._writer = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)
