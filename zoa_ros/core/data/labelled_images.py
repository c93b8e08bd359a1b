"""Labelled image folders: ``labels.csv`` (``path,class_index``) or ImageNet wnid folders."""

from __future__ import annotations

import csv
from pathlib import Path

from zoa_ros.core.files.images import find_images
from zoa_ros.core.model.labels import wnid_to_index


def labelled_images(root: str | Path, labels_csv: str | Path | None = None
                    ) -> list[tuple[Path, int]]:
    """``(path, class_index)`` pairs sorted by path.

    With a CSV (given, or ``root/labels.csv``) its ``path`` column is relative to ``root`` and
    ``class_index`` is the model's output index; otherwise each image's parent folder must be an
    ImageNet-1k wnid, mapped to its standard index (not its position among the folders).
    """
    root = Path(root)
    csv_path = Path(labels_csv) if labels_csv else root / "labels.csv"
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"path", "class_index"} <= set(rows[0]):
            raise ValueError(f"{csv_path}: needs 'path' and 'class_index' columns")
        pairs = [(root / r["path"], int(r["class_index"])) for r in rows]
        missing = [str(p) for p, _ in pairs if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{csv_path}: {len(missing)} listed images missing, "
                                    f"e.g. {missing[0]}")
        return sorted(pairs)
    if labels_csv:
        raise FileNotFoundError(f"{labels_csv}: no such labels file")
    pairs = []
    for path in find_images(root):
        try:
            pairs.append((path, wnid_to_index(path.parent.name)))
        except KeyError as e:
            raise ValueError(f"{path}: folder is not an ImageNet wnid and no labels.csv was "
                             "given") from e
    return pairs
