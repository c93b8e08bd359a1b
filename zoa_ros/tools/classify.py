"""``zoa-ros classify``: classify image files with a model pack (no adaptation). A file that is
not a readable image, claims more than ``--max-pixels`` pixels in its header (checked before
decoding) or has an extreme aspect ratio is reported as skipped, and the others are still
classified."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoa_ros.core.engine import Engine
from zoa_ros.core.files.images import DEFAULT_MAX_PIXELS, find_images, read_rgb
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.prediction import as_dicts
from zoa_ros.tools.backend_args import add_backend_arguments
from zoa_ros.tools.packs import add_pack_argument, resolve_pack


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images with a model pack", description=__doc__)
    add_pack_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--top-k", type=int, default=5)
    add_backend_arguments(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="skip images whose header claims more pixels (default %(default)s = "
                        "8192 x 8192)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    pack = ModelPack.load(resolve_pack(args.pack))
    # The engine every front end drives, with no adaptation: the numbers the node would give.
    engine = Engine(pack, method="none", top_k=args.top_k, adapt_enabled=False,
                    backend=args.backend, int8_model=args.int8_model)
    paths = [p for item in args.images for p in find_images(item)]
    failures = 0
    for path in paths:
        try:
            prediction = engine.predict([read_rgb(path, args.max_pixels)])[0]
        except ValueError as e:   # not an image, too many pixels; MalformedFrame: the aspect
            failures += 1
            print(json.dumps({"path": str(path), "error": str(e)}) if args.json
                  else f"{path}: skipped: {e}")
            continue
        _print(Path(path), prediction.top, prediction.latency_ms, args.json)
    return 1 if failures == len(paths) else 0


def _print(path: Path, results: list, ms: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": str(path), "top5": as_dicts(results), "ms": round(ms, 3)}))
        return
    print(f"{path}  ({ms:.1f} ms)")
    for r in results:
        print(f"  {r.score:6.1%}  {r.class_index:4d}  {r.label}")
