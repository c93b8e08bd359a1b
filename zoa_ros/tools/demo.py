"""``zoa-ros demo``: the main job on the embedded default - classify real photos with the
W8A8-quantized EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0 pip package) and
print the top-5 with latencies. The pack is calibrated once on the bundled photos and reused."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoa_ros.core.calibration import build_pack
from zoa_ros.core.models import ModelSpec
from zoa_ros.core.pack import ModelPack, PackError
from zoa_ros.core.quant import QuantConfig
from zoa_ros.core.sample_photos import write_photos
from zoa_ros.tools import classify

MODEL = ModelSpec("tf_efficientnet_lite0", "efficientnet-lite0")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="classify bundled photos with quantized EfficientNet-Lite0",
                       description=__doc__)
    p.add_argument("--out", default="out/demo", help="folder for the photos and the pack")
    p.add_argument("--quant", default="w8a8")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    photos = write_photos(out / "photos")
    pack_path = out / f"efficientnet_lite0_{args.quant}.zoapack"
    pack = _cached_pack(pack_path)
    if pack is None:
        print(f"calibrating {MODEL.name} {args.quant} on {len(photos)} bundled photos ...")
        pack = build_pack(MODEL, QuantConfig.parse(args.quant), photos, num_images=len(photos))
        pack.save(pack_path)
    print(f"pack {pack_path} ({pack.quant.name}, fingerprint {pack.fingerprint[:12]})\n")
    return classify.run(argparse.Namespace(pack=str(pack_path), json=False, top_k=5,
                                           images=[str(p) for p in photos]))


def _cached_pack(path: Path) -> ModelPack | None:
    if not path.exists():
        return None
    try:
        pack = ModelPack.load(path)
        pack.build_model()
        return pack
    except PackError as e:
        print(f"rebuilding {path}: {e}")
        return None
