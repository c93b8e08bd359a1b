"""``zoa-ros bank``: look into knowledge bank files."""

from __future__ import annotations

import argparse
import json

from zoa_ros.core.bank_file import inspect_bank


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bank", help="knowledge bank files", description=__doc__)
    bsub = p.add_subparsers(dest="bank", required=True, metavar="ACTION")
    i = bsub.add_parser("inspect", help="entries, sizes and metadata of a bank file")
    i.add_argument("file", help="knowledge bank file")
    i.add_argument("--json", action="store_true", help="print the whole record as JSON")
    i.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    info = inspect_bank(args.file)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    skip = {"tensor_bytes", "layers"}
    for key, value in info.items():
        if key not in skip:
            print(f"{key:22s} {value}")
    for name, size in info.get("tensor_bytes", {}).items():
        print(f"  tensor {name:28s} {size:10d} B")
    return 0
