"""``zoa-ros calibrate``: quantize a model on clean images and write a model pack.

``--images`` is a folder of image files or a rosbag2 recording (a folder with
``metadata.yaml``, or one ``.mcap`` / ``.db3`` file): then the frames of its camera topic
(``--image-topic``, default: its only image topic), evenly spaced over the recording, as for a
folder's sorted files. Clean frames of the robot's own camera give the pack source statistics of
that camera (what ZOA aligns adapted features with), instead of those of general photos."""

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
    p.add_argument("--images", required=True,
                   help="folder of clean jpg/jpeg/png images, or a rosbag2 recording")
    p.add_argument("--image-topic", help="with a recording: its camera topic (default: its "
                   "only sensor_msgs/Image or CompressedImage topic)")
    p.add_argument("--num-images", type=int, default=32,
                   help="images for the quantizer ranges (evenly spread over the sorted list)")
    p.add_argument("--num-stats-images", type=int, default=1024,
                   help="images for the source feature statistics")
    p.add_argument("--labels", help="class names file (one per line, or CSV with 'label')")
    p.add_argument("--num-classes", type=int, help="override the classifier size")
    p.add_argument("--out", required=True, help="pack file to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoa_ros.core.data.bags.frames import BagFrames, is_bag

    if args.num_images < 1 or args.num_stats_images < 2:
        raise ValueError("--num-images must be >= 1 and --num-stats-images >= 2")
    spec = ModelSpec(args.model, args.weights, args.num_classes)
    options = {"num_images": args.num_images, "num_stats_images": args.num_stats_images,
               "labels_file": args.labels}
    if is_bag(args.images):
        with BagFrames(args.images, args.image_topic) as frames:
            source = {"bag": str(args.images), "topic": frames.image_topic,
                      "frames": len(frames.positions), "malformed": frames.malformed}
            pack = build_pack(spec, QuantConfig.parse(args.quant), frames.positions,
                              read=frames.read, source=source, **options)
    else:
        if args.image_topic:
            raise ValueError("--image-topic needs --images to be a rosbag2 recording")
        pack = build_pack(spec, QuantConfig.parse(args.quant), find_images(args.images),
                          **options)
    pack.save(args.out)
    print(json.dumps({"pack": args.out, "fingerprint": pack.fingerprint,
                      "calibration": pack.calibration}, indent=2))
    return 0
