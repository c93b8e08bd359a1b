"""How far single clean photos lie from the clean reference (docs/lab/no-harm.md §11.12).

    .venv/bin/python docs/lab/single_frame_null.py --pack out/packs/lite0_w8a8_nh.zoapack \
        --data ../shared/data/imagenet-sample-dev

Re-measures the pack's shift reference on the photos, in their sorted (class) order, as
``zoa-ros calibrate`` does, but with windows of one photo too, and prints quantiles of the stem
test's clean null (the Jeffreys divergence of a window's pooled stem statistics from the clean
ones) for windows of 1 and 2 photos, beside the pack's own for 2 (equal when the photos are the
ones the pack was calibrated on). Packs carry no 1-photo null: the gate never tests one photo.
"""

from __future__ import annotations

import argparse

from zoa_ros.core.files.images import find_images, read_rgb
from zoa_ros.core.model import shift_reference
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor

QUANTILES = (0.5, 0.75, 0.9, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True)
    parser.add_argument("--data", required=True, help="the pack's calibration photos")
    args = parser.parse_args()
    pack = ModelPack.load(args.pack)
    model = pack.build_model().eval()
    pre = Preprocessor(pack.data_config)
    images = find_images(args.data)
    shift_reference.WINDOW_IMAGES = (1, 2)
    ref = shift_reference.measure_reference(model, images,
                                            lambda chunk: pre([read_rgb(p) for p in chunk]))
    stored = pack.shift_reference
    print(f"{len(images)} photos; quantiles of the clean stem divergence")
    print("photos  " + "  ".join(f"{q:>7.2f}" for q in QUANTILES))
    for m in (1, 2):
        row = [ref.threshold(shift_reference.STEM, m, 1.0 - q) for q in QUANTILES]
        print(f"{m:>6}  " + "  ".join(f"{v:7.3f}" for v in row))
    if stored is not None:
        row = [stored.threshold(shift_reference.STEM, 2, 1.0 - q) for q in QUANTILES]
        print("2, pack " + "  ".join(f"{v:7.3f}" for v in row))


if __name__ == "__main__":
    main()
