"""``zoa-ros calibrate``: quantize a model on clean images and write a model pack."""

from __future__ import annotations

import argparse
import json

from zoa_ros.core.files.images import find_images
from zoa_ros.core.model.calibration import build_pack
from zoa_ros.core.model.factory import RANDOM, ModelSpec
from zoa_ros.core.quant import PRESETS, QuantConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="build a model pack (quantizer state + source stats)",
                       description=__doc__)
    p.add_argument("--model", required=True, help="timm architecture, e.g. tf_efficientnet_lite0")
    p.add_argument("--weights", default=RANDOM,
                   help="checkpoint file (.safetensors/.pth), 'efficientnet-lite0' or 'random'")
    p.add_argument("--quant", default="w8a8", choices=sorted(PRESETS))
    p.add_argument("--images", required=True, help="folder of clean jpg/jpeg/png images")
    p.add_argument("--num-images", type=int, default=32,
                   help="images for the quantizer ranges (evenly spread over the sorted list)")
    p.add_argument("--num-stats-images", type=int, default=1024,
                   help="images for the source feature statistics")
    p.add_argument("--labels", help="class names file (one per line, or CSV with 'label')")
    p.add_argument("--num-classes", type=int, help="override the classifier size")
    p.add_argument("--out", required=True, help="pack file to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.num_images < 1 or args.num_stats_images < 2:
        raise ValueError("--num-images must be >= 1 and --num-stats-images >= 2")
    images = find_images(args.images)
    spec = ModelSpec(args.model, args.weights, args.num_classes)
    pack = build_pack(spec, QuantConfig.parse(args.quant), images, num_images=args.num_images,
                      num_stats_images=args.num_stats_images, labels_file=args.labels)
    pack.save(args.out)
    print(json.dumps({"pack": args.out, "fingerprint": pack.fingerprint,
                      "calibration": pack.calibration}, indent=2))
    return 0
