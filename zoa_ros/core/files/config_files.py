"""Where the files shipped in ``config/`` live, in a checkout or an installed package."""

from __future__ import annotations

import sys
from pathlib import Path


def config_path(name: str) -> Path | None:
    """A file shipped in ``config/``: the source tree / editable install, then the installed ROS
    package share (ament index), then ``<prefix>/share/zoa_ros/config`` of a pip install."""
    candidates = [Path(__file__).resolve().parents[3] / "config" / name]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("zoa_ros")) / "config" / name)
    except Exception:   # not a ROS install, or the package is not indexed
        pass
    candidates.append(Path(sys.prefix) / "share" / "zoa_ros" / "config" / name)
    return next((p for p in candidates if p.is_file()), None)
