"""Which recordings a fleet run replays, and as which robot and mission.

A source is one of

* a recording: a rosbag2 folder (it holds ``metadata.yaml``) or a single ``.mcap`` / ``.db3``;
* a folder of recordings: every recording below it, found recursively (the files of a
  recording are not looked into);
* a glob pattern such as ``'drives/*/mission_*'`` (quoted, so the shell leaves it alone; ``**``
  matches any depth): every recording or folder of recordings it matches;
* a manifest, a ``.csv`` file with the header row ``bag,robot,mission[,split]``: one recording
  per row, ``bag`` relative to the manifest's folder or absolute.

Robots and missions come from manifests. A recording given any other way is a robot of its own
(named by its path relative to the common folder of those recordings) with the one mission
``1``. Every problem - a source that matches nothing, a manifest row without a bag or robot, a
bag listed twice, two bags for one robot's mission - is a ``ValueError`` or
``FileNotFoundError`` that names it, raised before anything runs.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BAG_FILES = (".mcap", ".db3")
MANIFEST_COLUMNS = ("bag", "robot", "mission")
LOOSE_MISSION = "1"


@dataclass(frozen=True)
class FleetBag:
    """One recording of the fleet: its absolute path, robot, mission and (manifests) split."""

    path: Path
    robot: str
    mission: str
    split: str = ""

    @property
    def name(self) -> str:
        return f"{self.robot}/{self.mission}"


def is_bag(path: Path) -> bool:
    """A rosbag2 folder (with ``metadata.yaml``) or a single ``.mcap`` / ``.db3`` file."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix in BAG_FILES


def find_bags(folder: Path) -> list[Path]:
    """Every recording below ``folder`` (``folder`` itself if it is one), sorted by path."""
    if is_bag(folder):
        return [folder]
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if (here / "metadata.yaml").is_file():
            found.append(here)
            dirs.clear()   # a bag folder's own files are its storage, not more bags
            continue
        dirs.sort()
        found += [here / f for f in sorted(files) if Path(f).suffix in BAG_FILES]
    return sorted(found)


def mission_order(mission: str) -> tuple:
    """Sort key that orders ``2`` before ``10`` and ``m2`` before ``m10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", mission) if part)


def read_manifest(path: Path) -> list[FleetBag]:
    """The rows of a ``bag,robot,mission[,split]`` manifest."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if not set(MANIFEST_COLUMNS) <= set(header):
            raise ValueError(f"{path}: a fleet manifest needs the header row "
                             f"bag,robot,mission[,split] (found: {','.join(header) or 'none'})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: the manifest lists no bags")
    bags = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        missing = [c for c in MANIFEST_COLUMNS if not row.get(c)]
        if missing:
            raise ValueError(f"{path}:{line}: empty {', '.join(missing)}")
        bag = Path(row["bag"]).expanduser()
        bag = (bag if bag.is_absolute() else path.parent / bag).resolve()
        if not is_bag(bag):
            raise FileNotFoundError(f"{path}:{line}: {bag} is not a rosbag2 recording (a "
                                    "folder with metadata.yaml, or a .mcap / .db3 file)")
        bags.append(FleetBag(bag, row["robot"], row["mission"], row.get("split", "")))
    return bags


def collect(sources: Sequence[str]) -> list[FleetBag]:
    """The recordings named by ``sources`` (see the module docstring), in the order given."""
    if not sources:
        raise ValueError("no bags given: name bag folders, folders of bags, glob patterns or a "
                         "manifest .csv")
    listed: list[FleetBag] = []
    loose: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.suffix == ".csv" and path.is_file():
            listed += read_manifest(path.resolve())
        elif path.exists():
            found = find_bags(path)
            if not found:
                raise FileNotFoundError(f"{source}: no rosbag2 recording in it")
            loose += [p.resolve() for p in found]
        elif glob.has_magic(source):
            matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
            found = [bag for m in matches for bag in find_bags(Path(m))]
            if not found:
                raise FileNotFoundError(f"{source}: the pattern matches no rosbag2 recording")
            loose += [p.resolve() for p in found]
        else:
            raise FileNotFoundError(f"{source}: no such bag, folder or manifest")
    bags = listed + _loose_bags(list(dict.fromkeys(loose)))
    _check_unique(bags)
    return bags


def _loose_bags(paths: list[Path]) -> list[FleetBag]:
    """A robot per recording, named by its path relative to their common folder."""
    if not paths:
        return []
    common = Path(os.path.commonpath([p.parent for p in paths]))
    return [FleetBag(p, p.relative_to(common).as_posix(), LOOSE_MISSION) for p in paths]


def _check_unique(bags: Iterable[FleetBag]) -> None:
    paths: dict[Path, FleetBag] = {}
    missions: dict[tuple[str, str], FleetBag] = {}
    for bag in bags:
        if bag.path in paths:
            raise ValueError(f"{bag.path} is listed twice ({paths[bag.path].name} and {bag.name})")
        if (bag.robot, bag.mission) in missions:
            raise ValueError(f"robot {bag.robot!r} has two bags for mission {bag.mission!r}: "
                             f"{missions[(bag.robot, bag.mission)].path} and {bag.path}")
        paths[bag.path] = missions[(bag.robot, bag.mission)] = bag
