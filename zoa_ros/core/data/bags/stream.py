"""A rosbag2 recording (MCAP or sqlite3) as a :class:`~zoa_ros.core.data.stream.FrameStream`.

Every frame of one image topic (``sensor_msgs/Image`` rgb8/bgr8/mono8/rgba8/bgra8 or
``sensor_msgs/CompressedImage`` jpeg/png) is read in recording order and decoded to uint8
HxWx3 RGB. Labels come from a label topic or a sidecar CSV (:mod:`zoa_ros.core.data.bags.labels`).
Consecutive frames with the same domain name form one :class:`Segment` (a domain seen again
later is its next round); a bag without domain names is one segment named ``bag``, and a bag
without labels is one unlabelled segment (``Segment.labels is None``).

Opening the stream indexes the bag once: header stamps, label matching and the cheap header
checks (encoding, sizes), so the layout (:meth:`BagStream.plan`) is known before any pixel is
decoded. Malformed messages are counted with their reason and skipped - at indexing, or at
decoding for compressed data that does not decode; frames of a labelled bag without a matching
label are counted and skipped. Frames are decoded one segment at a time while iterating.

Sizes: with ``crop`` and ``input_hw`` (what ``zoa-ros replay`` passes) frames already at the
model's input size are used as they are and other frames are cropped as the model's
preprocessing does, when they are read (``Segment.at_input_size`` is then true); without them
the segments carry the frames as recorded and the evaluator crops them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoa_ros.core.data.bags.files import (
    COMPRESSED,
    IMAGE_TYPES,
    LABEL_TYPES,
    RawMessage,
    messages,
    open_bag,
    pick_topic,
    stamp_ns,
    topics,
)
from zoa_ros.core.data.bags.labels import Label, Labels, labels_from_csv, labels_from_topic
from zoa_ros.core.data.image_messages import (
    MalformedMessage,
    check_compressed,
    check_image,
    to_array,
)
from zoa_ros.core.data.stream import FrameStream, Segment, SegmentInfo

DEFAULT_SEGMENT = "bag"
AUTO = "auto"


@dataclass(frozen=True)
class _Frame:
    position: int       # index of the message on the image topic
    stamp: int          # header stamp, ns
    label: Label | None


@dataclass(frozen=True)
class _Planned:
    info: SegmentInfo
    frames: list[_Frame]


@dataclass(frozen=True)
class PlannedFrame:
    """One frame the stream yields: its index among the image topic's messages, header stamp
    (ns), class index (``None`` without labels) and segment (index into ``plan()``)."""

    position: int
    stamp: int
    label: int | None
    segment: int


class BagStream(FrameStream):
    """The frames of ``image_topic`` (default: the bag's only image topic), labelled from
    ``label_topic`` (``"auto"``: the one String/Int32 topic named ``labels``/``label``, if any;
    ``None``: no labels) or ``labels_csv``; the first ``limit`` usable frames if given."""

    def __init__(self, path: str | Path, *, image_topic: str | None = None,
                 label_topic: str | None = AUTO, labels_csv: str | Path | None = None,
                 crop: Callable[[np.ndarray], np.ndarray] | None = None,
                 input_hw: tuple[int, int] | None = None, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        if (crop is None) != (input_hw is None):
            raise ValueError("give both crop and input_hw, or neither")
        self.path = Path(path)
        self.crop, self.input_hw, self.limit = crop, input_hw, limit
        self.messages = 0
        self.malformed: Counter[str] = Counter()
        self.unlabelled_skipped = 0
        with open_bag(self.path) as reader:
            self.image_topic = pick_topic(reader, image_topic, IMAGE_TYPES, "image")
            self.image_type = topics(reader)[self.image_topic]
            self.labels = self._labels(reader, label_topic, labels_csv)
            frames = self._index(reader)
        self._segments = _group(frames)
        self.stamps = [f.stamp for f in frames]  # header stamps (ns) of the planned frames

    @property
    def kind(self) -> str:
        return "compressed" if self.image_type == COMPRESSED else "raw"

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    # ---- FrameStream ------------------------------------------------------------------------
    def plan(self) -> list[SegmentInfo]:
        return [s.info for s in self._segments]

    def describe(self) -> dict:
        return {"kind": "rosbag2", "path": str(self.path), "image_topic": self.image_topic,
                "image_type": self.image_type,
                "labels": self.labels.source if self.labels is not None else None,
                "messages": self.messages, "frames": self.total_frames, "limit": self.limit,
                "malformed": sum(self.malformed.values()),
                "malformed_reasons": dict(self.malformed.most_common(5)),
                "unlabelled_skipped": self.unlabelled_skipped}

    def __iter__(self) -> Iterator[Segment]:
        decoded = 0
        with open_bag(self.path) as reader:
            stream = enumerate(messages(reader, {self.image_topic}, self.path))
            for planned in self._segments:
                frames, labels = [], []
                for frame in planned.frames:
                    msg = seek(stream, frame.position, self.path)
                    try:
                        image = self._decode(reader.deserialize(msg.rawdata, msg.msgtype))
                    except MalformedMessage as e:
                        self.malformed[str(e)] += 1
                        continue
                    frames.append(image)
                    if frame.label is not None:
                        labels.append(frame.label.class_index)
                if frames:
                    decoded += len(frames)
                    yield Segment(planned.info.name, planned.info.round, frames,
                                  labels if self.labelled else None,
                                  at_input_size=self.crop is not None)
        if not decoded:
            reasons = "; ".join(f"{n} x {r}" for r, n in self.malformed.most_common(3))
            raise ValueError(f"{self.path}: no frame on {self.image_topic!r} decodes "
                             f"({reasons})")

    def planned_frames(self) -> list[PlannedFrame]:
        """Every planned frame in stream order (before decoding; undecodable compressed data
        is only found when a frame is decoded)."""
        return [PlannedFrame(f.position, f.stamp, f.label.class_index if f.label else None, i)
                for i, s in enumerate(self._segments) for f in s.frames]

    def raw_frames(self) -> Iterator[tuple[PlannedFrame, RawMessage]]:
        """The planned frames' messages as recorded (CDR bytes, log time), in stream order:
        what a live replay publishes."""
        planned = {p.position: p for p in self.planned_frames()}
        last = max(planned)
        with open_bag(self.path) as reader:
            for position, msg in enumerate(messages(reader, {self.image_topic}, self.path)):
                if position in planned:
                    yield planned[position], msg
                if position >= last:
                    return

    # ---- indexing -----------------------------------------------------------------------------
    def _labels(self, reader: Any, label_topic: str | None, labels_csv: str | Path | None
                ) -> Labels | None:
        if labels_csv is not None:
            return labels_from_csv(labels_csv)
        if label_topic == AUTO:
            found = topics(reader)
            named = sorted(t for t, m in found.items()
                           if m in LABEL_TYPES and t.rstrip("/").rsplit("/", 1)[-1]
                           in ("labels", "label"))
            if len(named) > 1:
                raise ValueError(f"several label topics ({', '.join(named)}); name one")
            label_topic = named[0] if named else None
        if label_topic is None:
            return None
        topic = pick_topic(reader, label_topic, LABEL_TYPES, "label")
        labels = labels_from_topic(reader, topic, topics(reader)[topic], self.path)
        if not len(labels):
            raise ValueError(f"label topic {topic!r} has no messages")
        return labels

    def _index(self, reader: Any) -> list[_Frame]:
        check = check_compressed if self.image_type == COMPRESSED else check_image
        frames: list[_Frame] = []
        stamps: list[int] = []
        matched_by_order = self.labels is not None and self.labels.by_order is not None
        for position, msg in enumerate(messages(reader, {self.image_topic}, self.path)):
            if self.limit is not None and len(frames) >= self.limit and not matched_by_order:
                break
            self.messages += 1
            try:
                decoded = reader.deserialize(msg.rawdata, msg.msgtype)
                check(decoded)
            except MalformedMessage as e:
                self.malformed[str(e)] += 1
                continue
            except Exception as e:  # a payload that is not valid CDR for its type
                self.malformed[f"undecodable {msg.msgtype} payload ({type(e).__name__})"] += 1
                continue
            stamp = stamp_ns(decoded.header.stamp)
            stamps.append(stamp)
            label = None
            if self.labels is not None:
                label = self.labels.find(position, stamp)
                if label is None:
                    self.unlabelled_skipped += 1
                    continue
            if self.limit is None or len(frames) < self.limit:
                frames.append(_Frame(position, stamp, label))
        self._check_index(frames, stamps)
        return frames

    def _check_index(self, frames: list[_Frame], stamps: list[int]) -> None:
        where = f"{self.path}: topic {self.image_topic!r}"
        if not self.messages:
            raise ValueError(f"{where} has no messages")
        if not stamps:
            reasons = "; ".join(f"{n} x {r}" for r, n in self.malformed.most_common(3))
            raise ValueError(f"{where}: none of its {self.messages} messages is a usable image "
                             f"({reasons})")
        labels = self.labels
        if labels is None:
            return
        if labels.by_order is not None and len(labels) != self.messages:
            raise ValueError(f"{where} has {self.messages} images but {labels.source} has "
                             f"{len(labels)} labels; Int32 labels are matched by order and need "
                             "one per image")
        if not frames:
            known = sorted(labels.by_stamp) or [0]
            raise ValueError(
                f"labels match no frame: none of the {len(labels)} labels from "
                f"{labels.source} has the header stamp of an image on {self.image_topic!r} "
                f"(label stamps {known[0]}..{known[-1]} ns, image stamps "
                f"{min(stamps)}..{max(stamps)} ns)")

    # ---- decoding -----------------------------------------------------------------------------
    def _decode(self, msg: Any) -> np.ndarray:
        image = to_array(msg, self.kind)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if self.crop is not None and image.shape[:2] != tuple(self.input_hw):
            image = self.crop(image)
        return image


def seek(stream: Iterator[tuple[int, RawMessage]], position: int, path: Path) -> RawMessage:
    """The message at ``position`` of an enumerated message iterator."""
    for at, msg in stream:
        if at == position:
            return msg
    raise ValueError(f"{path}: the bag changed while it was read")


def _group(frames: list[_Frame]) -> list[_Planned]:
    """Consecutive frames with the same domain -> segments; rounds count visits per name."""
    out: list[_Planned] = []
    visits: Counter[str] = Counter()
    for frame in frames:
        name = (frame.label.domain if frame.label is not None else None) or DEFAULT_SEGMENT
        if out and out[-1].info.name == name:
            out[-1].frames.append(frame)
            continue
        visits[name] += 1
        out.append(_Planned(SegmentInfo(name, visits[name], 0), [frame]))
    return [_Planned(SegmentInfo(p.info.name, p.info.round, len(p.frames)), p.frames)
            for p in out]
