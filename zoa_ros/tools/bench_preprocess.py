"""``zoa-ros bench preprocess``: the model's resize + center crop of camera frames, timm's PIL
transform against the uint8 tensor path :class:`~zoa_ros.core.model.preprocess.Preprocessor` uses,
measured in one run: time per frame and how far the pixels differ.

Frames are the photos bundled with scikit-image resized to each ``--sizes`` entry (or the images
of a folder), converted on ``--threads`` CPU threads, as the node's inference thread runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from zoa_ros.core.model.preprocess import Preprocessor


def add_parser(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("preprocess", help="resize + crop: PIL (timm) vs uint8 tensors",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", help="take the preprocessing from this model pack")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="without --pack: this timm model's pretrained cfg (no weights needed)")
    p.add_argument("--sizes", default="224x224,640x480,1280x720,1920x1080",
                   help="WxH,... frame sizes")
    p.add_argument("--frames-source", default="photos",
                   help="'photos' (the scikit-image sample photos) or an image folder")
    p.add_argument("--runs", type=int, default=200, help="frames timed per size and path")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(run=run)


def data_config(pack: str | None, model: str) -> dict:
    """The preprocessing config of a pack, or of a timm model's pretrained cfg."""
    if pack:
        from zoa_ros.core.model.pack import ModelPack
        return ModelPack.load(pack).data_config
    import timm
    from timm.data import resolve_model_data_config
    return resolve_model_data_config(timm.create_model(model, pretrained=False))


def timed(convert: Callable[[np.ndarray], object], frames: Sequence[np.ndarray], runs: int
          ) -> list[float]:
    """Wall time (ms) of ``convert(frame)`` over ``runs`` calls, cycling through ``frames``."""
    convert(frames[0])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        convert(frames[i % len(frames)])
        times.append((time.perf_counter() - start) * 1e3)
    return times


def compare(pre: Preprocessor, frames: Sequence[np.ndarray], runs: int) -> dict:
    """Both paths on ``frames``: p50 ms each, the speed-up, and the pixel difference (levels)."""
    def reference(frame: np.ndarray) -> np.ndarray:
        return pre.pil_crop(frame).permute(1, 2, 0).numpy()

    diffs = [np.abs(reference(f).astype(np.int16) - pre.crop(f).astype(np.int16))
             for f in frames]
    # interleaved blocks, so both paths see the same minutes of a shared machine
    pil, tensor = [], []
    for block in np.array_split(np.arange(runs), 4):
        pil += timed(reference, frames, len(block))
        tensor += timed(pre.crop, frames, len(block))
    p50_pil, p50_tensor = float(np.median(pil)), float(np.median(tensor))
    return {"pil_p50_ms": p50_pil, "tensor_p50_ms": p50_tensor,
            "speedup": p50_pil / p50_tensor,
            "max_abs_diff": int(max(d.max() for d in diffs)),
            "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
            "pixels_differing_pct": 100.0 * float(np.mean([(d > 0).mean() for d in diffs]))}


def run(args: argparse.Namespace) -> int:
    from zoa_ros.tools.bench_node import parse_sizes
    from zoa_ros.tools.bench_node.alongside import frames_at

    torch.set_num_threads(args.threads)
    pre = Preprocessor(data_config(args.pack, args.model))
    print(f"preprocessing {pre.data_config}")
    if not pre.fast:
        print("this geometry has no tensor path: the model uses timm's PIL transform")
        return 0
    rows = []
    print(f"{'size':>10s} {'PIL ms':>7s} {'tensor ms':>9s} {'speed-up':>8s} "
          f"{'max diff':>8s} {'mean diff':>9s} {'differ %':>8s}")
    for size in parse_sizes(args.sizes):
        row = {"size": f"{size[0]}x{size[1]}",
               **compare(pre, frames_at(args.frames_source, size), args.runs)}
        rows.append(row)
        print(f"{row['size']:>10s} {row['pil_p50_ms']:7.2f} {row['tensor_p50_ms']:9.2f} "
              f"{row['speedup']:7.1f}x {row['max_abs_diff']:8d} {row['mean_abs_diff']:9.4f} "
              f"{row['pixels_differing_pct']:8.2f}")
    print(f"p50 of {args.runs} frames per size and path on {args.threads} torch thread(s); "
          "diff = |PIL - tensor| in uint8 levels over the output crop")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data_config": pre.data_config, "threads": args.threads,
                       "results": rows}, f, indent=2)
    return 0
