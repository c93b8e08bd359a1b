"""``zoa-ros make-bag``: an image folder and a domain schedule -> a rosbag2 recording with a
camera topic and a label topic, corrupted on the fly as ``zoa-ros evaluate`` corrupts.

Frames come from the schedule (:mod:`zoa_ros.core.data.domain_schedule`): ``clean:N,fog:N`` over a
folder of N images gives the frames ``zoa-ros evaluate --corruptions clean,fog`` scores, in the
same order with the same corruption seeds (and ``--schedule S`` those of ``evaluate --schedule
S``; ``--order`` and ``--dwell`` as evaluate's); with ``--crop-for PACK`` they are also the same
pixels, so ``zoa-ros replay`` on the bag reproduces the evaluate numbers exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from zoa_ros.core.data.bags.writer import COMPRESSIONS, STORAGES, BagWriter
from zoa_ros.core.data.corruptions import SEVERITIES, corrupt
from zoa_ros.core.data.domain_schedule import parse_schedule, scheduled_frames
from zoa_ros.core.data.labelled_images import labelled_images
from zoa_ros.core.data.stream import load_crops
from zoa_ros.core.files.images import find_images
from zoa_ros.tools.stream_options import (
    SCHEDULE_HELP,
    add_order_arguments,
    check_order_arguments,
)

DEFAULT_START_S = 1_700_000_000.0  # header stamp of the first frame: fixed, so bags reproduce


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-bag", help="image folder + domain schedule -> rosbag2",
                       description=__doc__)
    p.add_argument("--data", required=True, help="image folder (wnid folders or labels.csv, "
                                                 "as for evaluate)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="labels CSV (path,class_index); default "
                                         "DATA/labels.csv")
    labels.add_argument("--no-labels", action="store_true",
                        help="any images, no label topic (an unlabelled recording)")
    p.add_argument("--schedule", required=True, metavar="SPEC", help=SCHEDULE_HELP)
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=5)
    p.add_argument("--seed", type=int, default=0,
                   help="image order and corruption seeds, as evaluate's --seed")
    add_order_arguments(p)
    p.add_argument("--rate", type=float, default=15.0, help="frames per second (header stamps)")
    p.add_argument("--start", type=float, default=DEFAULT_START_S,
                   help="header stamp of the first frame, seconds since the epoch")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--resize", type=_size, metavar="WxH",
                      help="scale each image to cover WxH, then center crop to WxH")
    size.add_argument("--crop-for", metavar="PACK",
                      help="resize + center crop each image exactly as that pack's model "
                           "preprocessing does (the frames evaluate corrupts)")
    p.add_argument("--storage", choices=STORAGES, default="mcap")
    p.add_argument("--compressed", nargs="?", const="jpeg", choices=COMPRESSIONS,
                   help="write sensor_msgs/CompressedImage (jpeg unless png is given) instead "
                        "of raw rgb8 sensor_msgs/Image")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--topic", default="/camera/image_raw", help="camera topic")
    p.add_argument("--label-topic", default="/camera/labels",
                   help="std_msgs/String label topic (JSON with stamp, class_index, domain)")
    p.add_argument("--frame-id", default="camera", help="header frame_id")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--out", required=True, help="bag folder to create")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.rate > 0:
        raise ValueError("--rate must be > 0")
    visits = parse_schedule(args.schedule)
    check_order_arguments(args, labelled=not args.no_labels)
    if Path(args.out).exists() and not args.force:
        raise ValueError(f"{args.out} exists; pass --force to replace it")
    if args.no_labels:
        paths, classes = find_images(args.data), None
    else:
        pairs = labelled_images(args.data, args.labels)
        paths, classes = [p for p, _ in pairs], [c for _, c in pairs]
    images = load_crops(paths, _geometry(args))
    total = sum(v.frames for v in visits)
    start_ns = round(args.start * 1e9)
    period_ns = 1e9 / args.rate
    provenance = {"schedule": args.schedule, "severity": args.severity, "seed": args.seed,
                  "order": str(args.order), "dwell": args.dwell,
                  "rate": args.rate, "images": len(paths), "data": str(args.data),
                  "resize": args.resize, "crop_for": args.crop_for}
    writer = BagWriter(args.out, storage=args.storage, image_topic=args.topic,
                       label_topic=None if args.no_labels else args.label_topic,
                       compressed=args.compressed, jpeg_quality=args.jpeg_quality,
                       frame_id=args.frame_id, force=args.force,
                       custom_data={"zoa_ros.make_bag": json.dumps(provenance)})
    progress = sys.stderr.isatty() or bool(os.environ.get("ZOA_PROGRESS"))
    with writer as bag, tqdm(total=total, unit="frame", desc="make-bag", file=sys.stderr,
                             disable=not progress, dynamic_ncols=True) as bar:
        held: tuple[tuple[str, int], np.ndarray] | None = None   # the frame a dwell repeats
        for i, f in enumerate(scheduled_frames(visits, len(images), args.seed, labels=classes,
                                               stream_order=args.order, dwell=args.dwell)):
            if held is None or held[0] != (f.name, f.image):
                severity = args.severity if f.severity is None else f.severity
                held = (f.name, f.image), corrupt(images[f.image], f.domain, severity, f.seed)
            bag.write(held[1], start_ns + round(i * period_ns),
                      None if classes is None else classes[f.image], f.name)
            bar.update(1)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"{args.out}: {total} frames of {len(paths)} images on {args.topic} "
          f"({'CompressedImage ' + args.compressed if args.compressed else 'Image rgb8'}), "
          f"{'no labels' if args.no_labels else 'labels on ' + args.label_topic}, "
          f"{args.storage}, {size / 2**20:.1f} MiB")
    return 0


def _geometry(args: argparse.Namespace) -> Callable[[np.ndarray], np.ndarray]:
    """How each image is sized before it is corrupted."""
    if args.crop_for:
        from zoa_ros.core.model.pack import ModelPack
        from zoa_ros.core.model.preprocess import Preprocessor

        return Preprocessor(ModelPack.load(args.crop_for).data_config).crop
    if args.resize:
        return lambda image: cover_crop(image, *args.resize)
    return lambda image: image


def cover_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale (bicubic) so the image covers ``width`` x ``height``, then center crop to it."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    scaled = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 224x224, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError("WxH must be at least 32x32 (corruptions need it)")
    return w, h
