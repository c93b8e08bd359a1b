"""Class names: ImageNet-1k from timm, or a custom labels file."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from timm.data import ImageNetInfo


@lru_cache(maxsize=1)
def _imagenet() -> ImageNetInfo:
    return ImageNetInfo("imagenet-1k")


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in class-index order."""
    info = _imagenet()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def wnid_to_index(wnid: str) -> int:
    """Standard ImageNet-1k index of a WordNet id (position among the 1000 sorted wnids)."""
    index = _imagenet_wnid_index().get(wnid)
    if index is None:
        raise KeyError(f"{wnid!r} is not an ImageNet-1k WordNet id")
    return index


@lru_cache(maxsize=1)
def _imagenet_wnid_index() -> dict[str, int]:
    info = _imagenet()
    return {info.index_to_label_name(i): i for i in range(info.num_classes())}


def load_labels_file(path: str | Path) -> list[str]:
    """Read class names: a text file with one name per line, or a CSV with a ``label`` column
    (and optionally ``class_index``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "label" not in rows[0]:
            raise ValueError(f"{path}: a labels CSV needs a 'label' column")
        if "class_index" in rows[0]:
            rows.sort(key=lambda r: int(r["class_index"]))
            indices = [int(r["class_index"]) for r in rows]
            if indices != list(range(len(rows))):
                raise ValueError(f"{path}: class_index must run 0..{len(rows) - 1} without gaps")
        return [r["label"] for r in rows]
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path}: no labels found")
    return labels


def resolve_labels(num_classes: int, labels_file: str | Path | None = None) -> list[str]:
    """Labels for a classifier head of ``num_classes`` outputs."""
    if labels_file is not None:
        labels = load_labels_file(labels_file)
    elif num_classes == 1000:
        labels = imagenet_labels()
    else:
        labels = [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} classes")
    return labels
