"""Opening rosbag2 recordings (MCAP or sqlite3) with the pure-Python ``rosbags`` library.

Every problem a user can cause - a missing path, a truncated or corrupt file, an unknown topic,
a topic of the wrong type - becomes a ``FileNotFoundError`` / ``ValueError`` that names it. No
rclpy here: payloads stay CDR bytes (identical to ``rclpy.serialization.serialize_message``),
so :func:`raw_messages` can also feed a publisher that puts them on a live graph unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
INT32 = "std_msgs/msg/Int32"
IMAGE_TYPES = (IMAGE, COMPRESSED)
LABEL_TYPES = (STRING, INT32)


@dataclass(frozen=True)
class RawMessage:
    """One recorded message: topic, receive time (ns), CDR bytes, type name."""

    topic: str
    log_time_ns: int
    rawdata: bytes
    msgtype: str


def typestore() -> Any:
    """The ROS 2 Kilted message definitions rosbags ships (what the rclpy wheels use)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open ``rosbags.highlevel.AnyReader`` on a bag folder (or a single .mcap / .db3)."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    try:
        reader = AnyReader([path])
        reader.open()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: not a rosbag2 recording ({e})") from e
    except Exception as e:  # rosbags raises its own error types, sqlite3 and struct errors
        raise ValueError(_unreadable(path, e)) from e
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def topics(reader: Any) -> dict[str, str]:
    """``{topic: message type}`` of an open reader."""
    return {c.topic: c.msgtype for c in reader.connections}


def describe_topics(reader: Any) -> str:
    return ", ".join(f"{t} ({m})" for t, m in sorted(topics(reader).items())) or "none"


def pick_topic(reader: Any, topic: str | None, types: Collection[str], what: str) -> str:
    """``topic`` after checking it exists with one of ``types``; without one, the only topic of
    those types in the bag."""
    found = topics(reader)
    if topic is not None:
        if topic not in found:
            raise ValueError(f"no topic {topic!r} in the bag; it has: {describe_topics(reader)}")
        if found[topic] not in types:
            article = "an" if what[:1] in "aeiou" else "a"
            raise ValueError(f"topic {topic!r} is {found[topic]}, not {article} {what} topic "
                             f"({' or '.join(types)})")
        return topic
    candidates = sorted(t for t, m in found.items() if m in types)
    if len(candidates) != 1:
        raise ValueError(f"{'no' if not candidates else 'several'} {what} topics in the bag "
                         f"(topics: {describe_topics(reader)}); name one")
    return candidates[0]


def messages(reader: Any, wanted: Collection[str], path: str | Path = "bag"
             ) -> Iterator[RawMessage]:
    """The messages of topics ``wanted``, in recording order; a corrupt stretch of the file
    raises a ``ValueError`` that says so."""
    connections = [c for c in reader.connections if c.topic in wanted]
    if not connections:
        return
    it = reader.messages(connections=connections)
    while True:
        try:
            connection, log_time, raw = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise ValueError(_unreadable(path, e)) from e
        yield RawMessage(connection.topic, int(log_time), bytes(raw), connection.msgtype)


def raw_messages(path: str | Path, wanted: Collection[str] | None = None
                 ) -> Iterator[RawMessage]:
    """Every message of ``wanted`` topics (all with ``None``) of the bag at ``path``, in
    recording order, as CDR bytes: what a live publisher replays."""
    with open_bag(path) as reader:
        yield from messages(reader, wanted if wanted is not None else set(topics(reader)), path)


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _unreadable(path: str | Path, error: Exception) -> str:
    return (f"{path}: not a readable rosbag2 recording - truncated or corrupt? "
            f"({type(error).__name__}: {error})")
