"""The ``--pack`` option of the commands: a model pack file, or without one the default pack
(:mod:`zoa_ros.core.model.default_pack`, built once into the user's cache)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACK_HELP = ("model pack file (default: the default pack, W8A8 EfficientNet-Lite0 calibrated "
             "on the photos bundled with scikit-image, built once into $ZOA_ROS_CACHE or "
             "~/.ros/zoa_ros)")


def add_pack_argument(p: argparse.ArgumentParser, repeatable: bool = False) -> None:
    """``--pack FILE`` (``repeatable``: may be given several times), optional."""
    if repeatable:
        p.add_argument("--pack", action="append", help=PACK_HELP + "; repeatable")
    else:
        p.add_argument("--pack", help=PACK_HELP)


def resolve_pack(value: str | None, quant: str = "w8a8") -> Path:
    """``value`` as a path, or the default pack of quantization ``quant`` (built if needed,
    the steps told on stderr)."""
    if value:
        return Path(value)
    from zoa_ros.core.model.default_pack import ensure_default_pack

    return ensure_default_pack(quant, log=_note).path


def _note(text: str) -> None:
    print(f"zoa-ros: {text}", file=sys.stderr, flush=True)
