"""How far single clean photos lie from the clean reference (docs/lab/no-harm.md §11.12).

    .venv/bin/python docs/lab/single_frame_null.py --pack out/packs/lite0_w8a8_nh.zoapack \
        --data ../shared/data/imagenet-sample-dev

Re-measures the shift reference on the photos, in their sorted (class) order, as
``zoa-ros calibrate`` does, and prints quantiles of the stem test's clean null (the Jeffreys
divergence of a window's pooled stem statistics from the clean ones) for windows of 1 and 2
photos, beside the pack's own (equal when the photos are the ones the pack was calibrated on;
packs calibrated before the 1-photo null, `f1b8ab9`, hold only the 2-photo row).
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
    measured = shift_reference.measure_reference(
        model, images, lambda chunk: pre([read_rgb(p) for p in chunk]))
    print(f"{len(images)} photos; quantiles of the clean stem divergence")
    print("photos    " + "  ".join(f"{q:>7.2f}" for q in QUANTILES))
    for name, ref in (("", measured), (", pack", pack.shift_reference)):
        for m in (1, 2):
            if ref is not None and m in ref.window_sizes:
                row = [ref.threshold(shift_reference.STEM, m, 1.0 - q) for q in QUANTILES]
                print(f"{f'{m}{name}':>8}  " + "  ".join(f"{v:7.3f}" for v in row))


if __name__ == "__main__":
    main()
