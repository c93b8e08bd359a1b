"""``zoa-ros evaluate``: the continual benchmark - methods side by side on a stream of corrupted
domains (an image folder corrupted on the fly, or an ImageNet-C tree), scored frame by frame."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from zoa_ros.core.atomic import atomic_write_bytes
from zoa_ros.core.corruptions import ALL_NAMES, CORRUPTIONS, SEVERITIES
from zoa_ros.core.engine import MODES
from zoa_ros.core.evaluation import evaluate
from zoa_ros.core.labelled_images import labelled_images
from zoa_ros.core.pack import ModelPack, library_versions
from zoa_ros.core.preprocess import Preprocessor
from zoa_ros.core.stream import CorruptionStream, FrameStream, ImageNetCStream, load_crops, subset

__all__ = ["add_parser", "build_stream", "evaluate", "parse_method_config", "run"]

# Below this many corrupted frames per segment, worker start-up costs more than it saves.
_POOL_MIN_FRAMES = 128


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="continual benchmark of adaptation methods",
                       description=__doc__)
    p.add_argument("--pack", required=True, help="model pack file")
    p.add_argument("--data", required=True, help="image folder, or ImageNet-C root")
    p.add_argument("--layout", choices=("folder", "imagenet-c"), default="folder",
                   help="folder: clean labelled images corrupted on the fly (wnid folders or "
                        "labels.csv); imagenet-c: DATA/<corruption>/<severity>/<wnid>/*")
    p.add_argument("--labels", help="labels CSV (path,class_index); default DATA/labels.csv")
    p.add_argument("--corruptions", type=_names, default=list(CORRUPTIONS),
                   help="comma-separated domains in stream order ('clean' allowed); "
                        "default: the 15 ImageNet-C corruptions in standard order")
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=5)
    p.add_argument("--rounds", type=int, default=1, help="times the domain sequence repeats")
    p.add_argument("--batch-size", type=int, default=64,
                   help="frames per adaptation step (batch mode: also per classified batch)")
    p.add_argument("--mode", choices=MODES, default="batch",
                   help="batch: classify a batch, then adapt on it (paper protocol); "
                        "streaming: classify frame by frame, adapt on the buffer every "
                        "batch-size frames")
    p.add_argument("--methods", type=_list, default=["none", "zoa"],
                   help="comma-separated methods, each on its own fresh model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int,
                   help="N images per domain: the first N of a seeded shuffle of the sorted "
                        "file list, the same N in every domain and round")
    p.add_argument("--method-config", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE",
                   help="method option (VALUE parsed as JSON, else a string); "
                        "METHOD.KEY=VALUE sets it for one method only")
    p.add_argument("--json", required=True, help="result file to write")
    p.add_argument("--report", help="folder for report.md and accuracy.png")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--workers", type=int,
                   help="processes computing corruptions ahead of the model (default: half the "
                        "CPUs, at most 8; 0: in this process)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--rounds, --batch-size and --limit must be >= 1")
    pack = ModelPack.load(args.pack)
    configs = parse_method_config(args.method_config, args.methods)
    stream = build_stream(args, pack)
    result = evaluate(pack, stream, args.methods, mode=args.mode, batch_size=args.batch_size,
                      seed=args.seed, method_configs=configs, device=args.device,
                      progress=sys.stderr.isatty() or bool(os.environ.get("ZOA_PROGRESS")))
    result["config"] = {
        **{k: v for k, v in vars(args).items() if k not in ("run", "command")},
        "method_configs": configs,
        "stream": stream.describe(),
        "pack_info": {"model": pack.spec.name, "weights": pack.spec.weights,
                      "quant": pack.quant.name, "fingerprint": pack.fingerprint},
        "versions": library_versions(),
    }
    atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    if args.report:
        from zoa_ros.tools.report import write_report
        write_report(result, args.report)
    _print_summary(result)
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
                               limit=args.limit)
    pairs = labelled_images(args.data, args.labels)
    ids = subset(len(pairs), args.limit, args.seed)
    crops = load_crops([pairs[i][0] for i in ids], pre.crop)
    workers, cpus = args.workers, os.cpu_count() or 1
    if workers is None:
        workers = min(8, cpus // 2) if len(ids) >= _POOL_MIN_FRAMES else 0
    if workers and args.device == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cpus - workers)))
    return CorruptionStream(crops, [pairs[i][1] for i in ids], ids, args.corruptions,
                            severity=args.severity, rounds=args.rounds, seed=args.seed,
                            workers=workers)


def parse_method_config(items: list[str], methods: list[str]) -> dict[str, dict]:
    """``["lr=1e-4", "zoa.spsa_c=0.02"]`` -> per-method option dicts."""
    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--method-config {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        scope, dot, name = key.partition(".")
        targets = [scope] if dot and scope in methods else methods
        for m in targets:
            out[m][name if dot and scope in methods else key] = value
    return out


def _list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _names(text: str) -> list[str]:
    items = _list(text)
    unknown = [s for s in items if s not in ALL_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown corruption {unknown[0]!r}; valid: "
                                         f"{', '.join(ALL_NAMES)}")
    return items


def _print_summary(result: dict) -> None:
    print(f"{'method':12s} {'mean acc':>9s} {'fwd/frame':>10s} {'ms/frame':>9s} "
          f"{'peak MB':>8s} {'domains':>8s}")
    for name, r in result["methods"].items():
        c = r["costs"]
        print(f"{name:12s} {r['mean_acc']:9.2f} {c['forward_per_frame']:10.3f} "
              f"{c['ms_per_frame']:9.2f} {c['peak_mb']:8.1f} {r['domain_changes']:8d}")
    run = result["run"]
    print(f"{run['frames']} frames per method in {run['wall_s']:.1f} s "
          f"({run['frames_per_s']:.1f} frames/s; reading/corrupting {run['stream_s']:.1f} s)")
