"""Ground-truth labels for the frames of a bag: a label topic or a sidecar CSV.

* ``std_msgs/String`` topic: JSON ``{"stamp": {"sec": S, "nanosec": N}, "class_index": C,
  "domain": D}`` (``domain`` optional), matched to the image with the same header stamp - the
  format ``zoa-ros make-bag`` writes (:func:`label_json`).
* ``std_msgs/Int32`` topic: the class index only, matched by order (the i-th label is the
  i-th message on the image topic).
* CSV with a header row ``stamp_ns,class_index[,domain]``, matched by header stamp.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoa_ros.core.data.bags.files import INT32, STRING, messages


@dataclass(frozen=True)
class Label:
    class_index: int
    domain: str | None = None


@dataclass
class Labels:
    """Labels keyed by header stamp (ns), or in image-message order; ``source`` says where from."""

    source: str
    by_stamp: dict[int, Label] = field(default_factory=dict)
    by_order: list[Label] | None = None

    def __len__(self) -> int:
        return len(self.by_order) if self.by_order is not None else len(self.by_stamp)

    def find(self, position: int, stamp: int) -> Label | None:
        """The label of the ``position``-th image message, whose header stamp is ``stamp``."""
        if self.by_order is not None:
            return self.by_order[position] if position < len(self.by_order) else None
        return self.by_stamp.get(stamp)


def label_json(stamp: int, class_index: int, domain: str) -> str:
    """The ``std_msgs/String`` label document (compact JSON, fixed key order)."""
    sec, nanosec = divmod(int(stamp), 1_000_000_000)
    return json.dumps({"stamp": {"sec": sec, "nanosec": nanosec},
                       "class_index": int(class_index), "domain": str(domain)},
                      separators=(",", ":"))


def parse_label_json(text: str) -> tuple[int, Label]:
    """``(stamp_ns, Label)`` from a label document; ``ValueError`` naming what is wrong."""
    try:
        doc = json.loads(text)
        stamp = doc["stamp"]
        sec, nanosec, index = stamp["sec"], stamp["nanosec"], doc["class_index"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (sec, nanosec, index)):
            raise TypeError("stamp.sec, stamp.nanosec and class_index must be integers")
        domain = doc.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise TypeError("domain must be a string")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad label {text[:80]!r}: expected JSON {{\"stamp\": {{\"sec\", "
                         f"\"nanosec\"}}, \"class_index\", \"domain\"}} ({e})") from e
    return sec * 1_000_000_000 + nanosec, Label(index, domain or None)


def labels_from_topic(reader: Any, topic: str, msgtype: str, path: str | Path) -> Labels:
    """Every label on ``topic`` (a String JSON or Int32 topic) of an open reader."""
    labels = Labels(f"topic {topic} ({msgtype})")
    if msgtype == INT32:
        labels.by_order = []
    for count, msg in enumerate(messages(reader, {topic}, path)):
        decoded = reader.deserialize(msg.rawdata, msg.msgtype)
        if msgtype == STRING:
            try:
                stamp, label = parse_label_json(decoded.data)
            except ValueError as e:
                raise ValueError(f"{topic} message {count}: {e}") from e
            labels.by_stamp[stamp] = label
        else:
            labels.by_order.append(Label(int(decoded.data)))
    return labels


def labels_from_csv(path: str | Path) -> Labels:
    """Labels from a ``stamp_ns,class_index[,domain]`` CSV (header row required)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"stamp_ns", "class_index"} <= set(rows[0]):
        raise ValueError(f"{path}: needs a header row with 'stamp_ns' and 'class_index' "
                         "(and optionally 'domain') columns")
    labels = Labels(f"file {path}")
    for line, row in enumerate(rows, start=2):
        try:
            stamp, index = int(row["stamp_ns"]), int(row["class_index"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{line}: stamp_ns and class_index must be integers") from e
        labels.by_stamp[stamp] = Label(index, (row.get("domain") or "").strip() or None)
    return labels

