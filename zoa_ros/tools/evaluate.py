"""``zoa-ros evaluate``: the continual benchmark - methods side by side on a stream of corrupted
domains (an image folder corrupted on the fly, or an ImageNet-C tree), scored frame by frame."""

from __future__ import annotations

import argparse
import os

import torch

from zoa_ros.core.data.corruptions import ALL_NAMES, CORRUPTIONS, SEVERITIES
from zoa_ros.core.data.domain_schedule import parse_schedule
from zoa_ros.core.data.labelled_images import labelled_images
from zoa_ros.core.data.stream import (
    CorruptionStream,
    FrameStream,
    ImageNetCStream,
    load_crops,
    subset,
)
from zoa_ros.core.eval.evaluation import evaluate
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.tools.evaluation_cli import (
    add_bank_arguments,
    add_method_arguments,
    add_output_arguments,
    check_bank_arguments,
    comma_list,
    parse_method_config,
    run_evaluation,
)
from zoa_ros.tools.packs import resolve_pack
from zoa_ros.tools.stream_options import (
    SCHEDULE_HELP,
    add_order_arguments,
    check_order_arguments,
)

__all__ = ["add_parser", "build_stream", "evaluate", "parse_method_config", "run"]

# Below this many corrupted frames per segment, worker start-up costs more than it saves.
_POOL_MIN_FRAMES = 128


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="continual benchmark of adaptation methods",
                       description=__doc__)
    p.add_argument("--data", required=True, help="image folder, or ImageNet-C root")
    p.add_argument("--layout", choices=("folder", "imagenet-c"), default="folder",
                   help="folder: clean labelled images corrupted on the fly (wnid folders or "
                        "labels.csv); imagenet-c: DATA/<corruption>/<severity>/<wnid>/*")
    p.add_argument("--labels", help="labels CSV (path,class_index); default DATA/labels.csv")
    p.add_argument("--corruptions", type=corruption_list, default=list(CORRUPTIONS),
                   help="comma-separated domains in stream order ('clean' allowed); "
                        "default: the 15 ImageNet-C corruptions in standard order")
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=5)
    p.add_argument("--schedule", metavar="SPEC",
                   help="instead of --corruptions/--rounds, visits of their own length and "
                        f"severity: {SCHEDULE_HELP}; the frames make-bag writes for the same "
                        "options")
    p.add_argument("--rounds", type=int, default=1, help="times the domain sequence repeats")
    p.add_argument("--same-order", action="store_true",
                   help="every round replays each domain's frames in round 1's order (default: "
                        "a new seeded order per round); rounds then differ only by what the "
                        "method carried over")
    p.add_argument("--limit", type=int,
                   help="N images per domain: the first N of a seeded shuffle of the sorted "
                        "file list, the same N in every domain and round")
    p.add_argument("--workers", type=int,
                   help="processes computing corruptions ahead of the model (default: half the "
                        "CPUs, at most 8; 0: in this process)")
    add_order_arguments(p)
    add_method_arguments(p)
    p.add_argument("--stats-every", type=int, metavar="N",
                   help="streaming: statistics that follow the frames (norm, zoa) take the "
                        "observed frames in groups of N, replayed on the torch reference "
                        "before the next step, as with the int8 runtime (default there: 1); "
                        "with --backend torch this measures what the grouping costs (default: "
                        "at each prediction)")
    add_output_arguments(p)
    add_bank_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--rounds, --batch-size and --limit must be >= 1")
    args.pack = str(resolve_pack(args.pack))
    check_order_arguments(args)
    visits = None if args.schedule is None else parse_schedule(args.schedule)
    if visits is not None and args.layout == "imagenet-c":
        raise ValueError("--schedule is for the folder layout")
    if visits is not None and (args.rounds != 1 or args.same_order):
        raise ValueError("--schedule gives every visit: not with --rounds or --same-order")
    pack = ModelPack.load(args.pack)
    parse_method_config(args.method_config, args.methods)  # fail before reading the data
    check_bank_arguments(args, pack)
    run_evaluation(args, pack, build_stream(args, pack), "evaluate")
    return 0


def build_stream(args: argparse.Namespace, pack: ModelPack) -> FrameStream:
    """The frame stream the arguments describe."""
    pre = Preprocessor(pack.data_config)
    if args.layout == "imagenet-c":
        if args.labels:
            raise ValueError("--labels is for the folder layout; ImageNet-C labels come from "
                             "its wnid folders")
        if "clean" in args.corruptions:
            raise ValueError("an ImageNet-C tree has no 'clean' domain")
        return ImageNetCStream(args.data, args.corruptions, pre.crop, pre.input_size[1:],
                               severity=args.severity, rounds=args.rounds, seed=args.seed,
                               limit=args.limit, same_order=args.same_order,
                               stream_order=args.order, dwell=args.dwell)
    pairs = labelled_images(args.data, args.labels)
    ids = subset(len(pairs), args.limit, args.seed)
    crops = load_crops([pairs[i][0] for i in ids], pre.crop)
    workers, cpus = args.workers, os.cpu_count() or 1
    if workers is None:
        workers = min(8, cpus // 2) if len(ids) >= _POOL_MIN_FRAMES else 0
    if workers and args.device == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cpus - workers)))
    visits = None if args.schedule is None else parse_schedule(args.schedule)
    corruptions = args.corruptions if visits is None else ()
    return CorruptionStream(crops, [pairs[i][1] for i in ids], ids, corruptions,
                            severity=args.severity, rounds=args.rounds, seed=args.seed,
                            workers=workers, same_order=args.same_order, visits=visits,
                            stream_order=args.order, dwell=args.dwell)


def corruption_list(text: str) -> list[str]:
    """Comma-separated corruption names (``clean`` allowed)."""
    items = comma_list(text)
    unknown = [s for s in items if s not in ALL_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown corruption {unknown[0]!r}; valid: "
                                         f"{', '.join(ALL_NAMES)}")
    return items
