"""``zoa-ros bench model``: accuracy, single-image latency and batch throughput of model packs,
all measured in one run on this machine. ``zoa-ros bench node``: end-to-end latency and dropped
frames of a live zoa_node next to the model's own latency (:mod:`zoa_ros.tools.bench_node`).
``zoa-ros bench preprocess``: resizing camera frames for the model, timm's PIL transform against
the uint8 tensor path the engine uses (:mod:`zoa_ros.tools.bench_preprocess`). ``zoa-ros bench
fleet``: ``zoa-ros fleet`` on the local process pool against Ray
(:mod:`zoa_ros.tools.fleet.bench`)."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from zoa_ros.core.data.labelled_images import labelled_images
from zoa_ros.core.files.images import read_rgb
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.runtime.allocator import keep_freed_memory
from zoa_ros.tools import bench_node, bench_preprocess
from zoa_ros.tools.fleet import bench as bench_fleet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks", description=__doc__)
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    m = bsub.add_parser("model", help="accuracy and speed of model packs", description=__doc__)
    m.add_argument("--pack", action="append", required=True, help="model pack (repeatable)")
    m.add_argument("--data", required=True, help="labelled image folder (labels.csv or wnids)")
    m.add_argument("--labels", help="labels CSV (path,class_index); default DATA/labels.csv")
    m.add_argument("--limit", type=int, help="use only the first N images")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--latency-runs", type=int, default=100)
    m.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="raise glibc's malloc thresholds first, as every engine does "
                        "(zoa_ros/core/runtime/allocator.py); --no-keep-freed-memory: glibc's "
                        "defaults")
    m.add_argument("--json", help="also write the results here")
    m.set_defaults(run=run_model)
    bench_node.add_parser(bsub)
    bench_preprocess.add_parser(bsub)
    bench_fleet.add_parser(bsub)


def run_model(args: argparse.Namespace) -> int:
    kept = args.keep_freed_memory and keep_freed_memory()
    pairs = labelled_images(args.data, args.labels)[: args.limit]
    packs = [ModelPack.load(p) for p in args.pack]
    pre = Preprocessor(packs[0].data_config)
    images = [read_rgb(p) for p, _ in tqdm(pairs, desc="reading images")]
    x = pre(images)
    y = torch.tensor([c for _, c in pairs])
    rows = []
    for path, pack in zip(args.pack, packs):
        if pack.data_config != packs[0].data_config:
            raise ValueError(f"{path}: preprocessing differs from the first pack's")
        rows.append({"pack": path, "quant": pack.quant.name,
                     **measure(pack.build_model(), x, y, args.batch_size, args.latency_runs)})
    print(f"{'pack':40s} {'quant':5s} {'top1':>6s} {'top5':>6s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'img/s@' + str(args.batch_size):>9s}")
    for r in rows:
        print(f"{r['pack'][-40:]:40s} {r['quant']:5s} {r['top1']:6.1f} {r['top5']:6.1f} "
              f"{r['latency_p50_ms']:7.1f} {r['latency_p99_ms']:7.1f} {r['throughput']:9.1f}")
    print(f"{len(pairs)} images from {args.data}; torch threads: {torch.get_num_threads()}; "
          f"malloc thresholds: {'raised' if kept else 'glibc defaults'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": len(pairs), "data": args.data, "keep_freed_memory": kept,
                       "results": rows}, f, indent=2)
    return 0


@torch.no_grad()
def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
            latency_runs: int) -> dict:
    """Top-1/top-5 (%), single-image latency p50/p99 (ms) and batch throughput (img/s)."""
    model.eval()
    model(x[:1])
    start = time.perf_counter()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    throughput = len(x) / (time.perf_counter() - start)
    top5 = logits.topk(5, dim=-1).indices
    times = []
    for i in range(latency_runs):
        one = x[i % len(x)].unsqueeze(0)
        t0 = time.perf_counter()
        model(one)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"top1": 100.0 * float((top5[:, 0] == y).float().mean()),
            "top5": 100.0 * float((top5 == y[:, None]).any(dim=1).float().mean()),
            "latency_p50_ms": float(np.percentile(times, 50)),
            "latency_p99_ms": float(np.percentile(times, 99)),
            "throughput": throughput}
