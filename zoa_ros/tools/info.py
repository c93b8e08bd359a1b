"""``zoa-ros info``: what is in a model pack."""

from __future__ import annotations

import argparse
import json

from zoa_ros.core.model.pack import ModelPack
from zoa_ros.tools.packs import resolve_pack


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show what is in a model pack", description=__doc__)
    p.add_argument("pack", nargs="?", help="model pack file (default: the default pack)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(ModelPack.load(resolve_pack(args.pack)).summary(), indent=2))
    return 0
