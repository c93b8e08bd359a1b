"""``zoa-ros bank``: look into and merge knowledge bank files."""

from __future__ import annotations

import argparse
import json

from zoa_ros.core.adapt.zoa import ZOAConfig
from zoa_ros.core.bank.file import inspect_bank
from zoa_ros.core.bank.merge import merge_files

MERGE_HELP = """\
Merge knowledge banks of the same model pack (e.g. from several robots or missions) into one.

The output holds the union of the inputs' entries, in input order. If that exceeds --capacity,
ZOA's own rule prunes it: repeatedly drop the older entry of the most similar pair (mean cosine
similarity of the per-layer scale and shift deltas). Banks of different model packs, adapted
layers or alpha_scale are refused.

The merged bank starts neutral: equal mixing logits over all entries and a current delta that
cancels their mixture, so outputs equal the source model's until adaptation moves the mixing
weights; detector state, shift history and BatchNorm test statistics start fresh. Each entry
keeps its provenance (robot, mission, created) with the input file as its source.

All inputs are checked before anything is written; the output is written atomically (never a
partial file) and an existing output is only replaced with --force. Exit status 2 (nothing
written) if any input is refused."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bank", help="knowledge bank files", description=__doc__)
    bsub = p.add_subparsers(dest="bank", required=True, metavar="ACTION")
    i = bsub.add_parser("inspect", help="entries, provenance, sizes and metadata of a bank file")
    i.add_argument("file", help="knowledge bank file")
    i.add_argument("--json", action="store_true", help="print the whole record as JSON")
    i.set_defaults(run=run_inspect)
    m = bsub.add_parser("merge", help="merge bank files of one model pack into one",
                        description=MERGE_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("inputs", nargs="+", metavar="BANK", help="bank files to merge, in order")
    m.add_argument("--out", required=True, help="merged bank file to write")
    m.add_argument("--capacity", type=int, default=ZOAConfig().capacity,
                   help="most entries to keep (default: ZOA's default capacity, %(default)s)")
    m.add_argument("--robot", default="", help="robot to record in the output's provenance")
    m.add_argument("--mission", default="",
                   help="mission to record in the output's provenance")
    m.add_argument("--force", action="store_true", help="replace an existing output file")
    m.set_defaults(run=run_merge)


def _cell(origin: dict | None, key: str) -> str:
    if origin is None:
        return "?"
    value = origin.get(key)
    return "-" if value in (None, "") else str(value)


def run_inspect(args: argparse.Namespace) -> int:
    info = inspect_bank(args.file)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    skip = {"tensor_bytes", "layers", "entry_provenance"}
    for key, value in info.items():
        if key not in skip:
            print(f"{key:22s} {value}")
    for name, size in info.get("tensor_bytes", {}).items():
        print(f"  tensor {name:28s} {size:10d} B")
    origins = info.get("entry_provenance", [])
    if origins:
        print("entries (? = provenance unknown):")
        print(f"  {'#':>3s}  {'robot':16s} {'mission':16s} {'created':20s} {'domain':>6s}  source")
        for n, o in enumerate(origins):
            print(f"  {n:3d}  {_cell(o, 'robot'):16s} {_cell(o, 'mission'):16s} "
                  f"{_cell(o, 'created'):20s} {_cell(o, 'domain_id'):>6s}  {_cell(o, 'source')}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    capacity = args.capacity
    labels = {k: v for k, v in (("robot", args.robot), ("mission", args.mission)) if v}
    merged = merge_files(args.inputs, args.out, capacity, labels, force=args.force)
    total = len(merged.picked) + len(merged.removed)
    print(f"wrote {args.out}: {len(merged.picked)} of {total} entries from "
          f"{len(args.inputs)} banks (capacity {capacity})")
    for i, j in merged.removed:
        print(f"  pruned (most similar pair): {args.inputs[i]} entry {j}")
    return 0
