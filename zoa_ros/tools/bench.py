"""``zoa-ros bench model``: accuracy, single-frame latency and batch throughput of model packs
on the torch simulation, the int8 runtime and the float baselines (torch and ONNX Runtime fp32 of
the same network), all measured in one run on this machine with the ratios that matter.
``zoa-ros bench node``: end-to-end latency and dropped frames of a live zoa_node next to the
model's own latency (:mod:`zoa_ros.tools.bench_node`). ``zoa-ros bench preprocess``: resizing
camera frames for the model, timm's PIL transform against the uint8 tensor path the engine uses
(:mod:`zoa_ros.tools.bench_preprocess`). ``zoa-ros bench fuzz``: hostile camera messages into a
live zoa_node (:mod:`zoa_ros.tools.bench_fuzz`). ``zoa-ros bench soak``: a long run of a live
zoa_node, minute by minute (:mod:`zoa_ros.tools.bench_soak`). ``zoa-ros bench fleet``:
``zoa-ros fleet`` on the local process pool against Ray (:mod:`zoa_ros.tools.fleet.bench`)."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from zoa_ros.core.data.labelled_images import labelled_images
from zoa_ros.core.files.images import read_rgb
from zoa_ros.core.model.factory import build_model
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.runtime.allocator import keep_freed_memory
from zoa_ros.core.runtime.cpus import cpu_flags
from zoa_ros.tools import bench_fuzz, bench_node, bench_preprocess, bench_soak
from zoa_ros.tools.backend_args import BACKEND_HELP
from zoa_ros.tools.fleet import bench as bench_fleet
from zoa_ros.tools.packs import add_pack_argument, resolve_pack

Forward = Callable[[torch.Tensor], torch.Tensor]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks", description=__doc__)
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    m = bsub.add_parser("model", help="accuracy and speed of model packs", description=__doc__)
    add_pack_argument(m, repeatable=True)
    m.add_argument("--data", required=True, help="labelled image folder (labels.csv or wnids)")
    m.add_argument("--labels", help="labels CSV (path,class_index); default DATA/labels.csv")
    m.add_argument("--limit", type=int, help="use only the first N images")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--latency-runs", type=int, default=100)
    m.add_argument("--threads", type=int, default=1,
                   help="compute threads of every model (default 1, as the node classifies)")
    m.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="torch: the torch rows only; auto/onnxruntime: also the int8 runtime "
                        "and ONNX Runtime fp32 (onnxruntime: fail where they cannot run; "
                        f"auto: say why and go on). {BACKEND_HELP}")
    m.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="raise glibc's malloc thresholds first, as every engine does "
                        "(zoa_ros/core/runtime/allocator.py); --no-keep-freed-memory: glibc's "
                        "defaults")
    m.add_argument("--json", help="also write the results here")
    m.set_defaults(run=run_model)
    bench_node.add_parser(bsub)
    bench_preprocess.add_parser(bsub)
    bench_fuzz.add_parser(bsub)
    bench_soak.add_parser(bsub)
    bench_fleet.add_parser(bsub)


def run_model(args: argparse.Namespace) -> int:
    kept = args.keep_freed_memory and keep_freed_memory()
    torch.set_num_threads(args.threads)
    pairs = labelled_images(args.data, args.labels)[: args.limit]
    args.pack = args.pack or [str(resolve_pack(None))]
    packs = [ModelPack.load(p) for p in args.pack]
    pre = Preprocessor(packs[0].data_config)
    images = [read_rgb(p) for p, _ in tqdm(pairs, desc="reading images")]
    x = pre(images)
    y = torch.tensor([c for _, c in pairs])
    rows: list[dict] = []
    floats: dict[tuple, dict] = {}   # per network: its torch fp32 and ONNX Runtime fp32 rows
    for path, pack in zip(args.pack, packs):
        if pack.data_config != packs[0].data_config:
            raise ValueError(f"{path}: preprocessing differs from the first pack's")
        key = (pack.spec.name, pack.spec.weights, pack.spec.num_classes, pack.spec.seed)
        if key not in floats:
            floats[key] = _float_rows(pack, x, y, args)
            rows += floats[key].values()
        sim = pack.build_model()
        label = f"torch {pack.quant.name} simulated" if pack.quant.enabled else "torch fp32"
        reference = _row(label, path, _torch_forward(sim), x, y, args)
        rows.append(reference)
        if args.backend != "torch" and pack.quant.enabled:
            int8 = _int8_row(pack, path, sim, x, y, args, reference)
            if int8 is not None:
                int8["ratios"] = _ratios(int8, floats[key])
                rows.append(int8)
    flags = cpu_flags()
    _print(rows, len(pairs), args, kept, flags)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": len(pairs), "data": args.data, "keep_freed_memory": kept,
                       "threads": args.threads, "cpu_flags": flags,
                       "machine": platform.machine(), "results": rows}, f, indent=2)
    return 0


def _float_rows(pack: ModelPack, x: torch.Tensor, y: torch.Tensor,
                args: argparse.Namespace) -> dict[str, dict]:
    """torch fp32 and (unless --backend torch) ONNX Runtime fp32 of the pack's network."""
    model = build_model(pack.spec)
    out = {"torch": _row("torch fp32", pack.spec.name, _torch_forward(model), x, y, args)}
    if args.backend == "torch":
        return out
    try:
        from zoa_ros.core.backend.export import export_float
        from zoa_ros.core.backend.ort import float_session
        run = float_session(export_float(model, tuple(pack.data_config["input_size"])),
                            args.threads)
    except (ImportError, ValueError) as e:
        if args.backend == "onnxruntime":
            raise
        print(f"ONNX Runtime fp32 not measured: {e}")
        return out
    out["onnxruntime"] = _row("onnxruntime fp32", pack.spec.name, run, x, y, args)
    return out


def _int8_row(pack: ModelPack, path: str, sim: torch.nn.Module, x: torch.Tensor,
              y: torch.Tensor, args: argparse.Namespace, reference: dict) -> dict | None:
    try:
        from zoa_ros.core.backend.export import export_pack
        from zoa_ros.core.backend.ort import OrtBackend
        backend = OrtBackend(export_pack(pack), sim, threads=args.threads)
    except (ImportError, ValueError) as e:
        if args.backend == "onnxruntime":
            raise
        print(f"{path}: int8 runtime not measured: {e}")
        return None
    row = _row(f"onnxruntime int8 ({pack.quant.name} grid)", path, backend.predict, x, y, args)
    same = np.asarray(row.pop("predictions")) == np.asarray(reference["predictions"])
    row["agreement"] = 100.0 * float(same.mean())
    return row


def _ratios(int8: dict, floats: dict[str, dict]) -> dict:
    out = {}
    for name, row in floats.items():
        out[f"p50_vs_{name}_fp32"] = int8["latency_p50_ms"] / row["latency_p50_ms"]
        out[f"throughput_vs_{name}_fp32"] = int8["throughput"] / row["throughput"]
    return out


def _torch_forward(model: torch.nn.Module) -> Forward:
    model.eval()

    @torch.no_grad()
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model(batch)
    return forward


def _row(name: str, source: str, forward: Forward, x: torch.Tensor, y: torch.Tensor,
         args: argparse.Namespace) -> dict:
    return {"name": name, "pack": source,
            **measure(forward, x, y, args.batch_size, args.latency_runs)}


def _print(rows: list[dict], images: int, args: argparse.Namespace, kept: bool,
           flags: list[str]) -> None:
    print(f"{'model':34s} {'from':28s} {'top1':>6s} {'top5':>6s} {'same%':>6s} {'p50 ms':>7s} "
          f"{'p99 ms':>7s} {'img/s@' + str(args.batch_size):>9s}")
    for r in rows:
        same = f"{r['agreement']:6.1f}" if "agreement" in r else f"{'':6s}"
        print(f"{r['name'][:34]:34s} {r['pack'][-28:]:28s} {r['top1']:6.1f} {r['top5']:6.1f} "
              f"{same} {r['latency_p50_ms']:7.1f} {r['latency_p99_ms']:7.1f} "
              f"{r['throughput']:9.1f}")
    for r in rows:
        q = r.get("ratios")
        if q:
            text = ", ".join(f"{q[f'p50_vs_{n}_fp32']:.2f}x {n} fp32's"
                             for n in ("onnxruntime", "torch") if f"p50_vs_{n}_fp32" in q)
            thr = ", ".join(f"{q[f'throughput_vs_{n}_fp32']:.2f}x {n} fp32's"
                            for n in ("onnxruntime", "torch") if f"throughput_vs_{n}_fp32" in q)
            print(f"{r['pack']}: int8 single-frame p50 {text}; batch-{args.batch_size} "
                  f"throughput {thr}")
    rows_with = [r for r in rows if "predictions" in r]
    for r in rows_with:
        r.pop("predictions")
    print(f"{images} images from {args.data}; threads: {args.threads}; malloc thresholds: "
          f"{'raised' if kept else 'glibc defaults'}; CPU: {platform.machine()} "
          f"{' '.join(flags) or '(flags unknown)'}; same% = identical top-1 with the "
          "simulation")


def measure(forward: Forward, x: torch.Tensor, y: torch.Tensor, batch_size: int,
            latency_runs: int) -> dict:
    """Top-1/top-5 (%), single-image latency p50/p99 (ms), batch throughput (img/s) of
    ``forward``, and its top-1 class per image (``predictions``)."""
    forward(x[:1])
    start = time.perf_counter()
    logits = torch.cat([forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    throughput = len(x) / (time.perf_counter() - start)
    top5 = logits.topk(5, dim=-1).indices
    times = []
    for i in range(latency_runs):
        one = x[i % len(x)].unsqueeze(0)
        t0 = time.perf_counter()
        forward(one)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"top1": 100.0 * float((top5[:, 0] == y).float().mean()),
            "top5": 100.0 * float((top5 == y[:, None]).any(dim=1).float().mean()),
            "latency_p50_ms": float(np.percentile(times, 50)),
            "latency_p99_ms": float(np.percentile(times, 99)),
            "throughput": throughput, "predictions": top5[:, 0].tolist()}
