"""``zoa-ros export``: a model pack as an int8 ONNX QDQ graph with the pack's own scales.

The file is tied to the pack by the pack's fingerprint (ONNX metadata); the engine refuses it
with any other pack. The engine does not need the file: without one (``--int8-model``,
``inference.int8_model``) it exports the pack when it starts, a few seconds, so an export can
never be stale. The file is for other QDQ runtimes (ONNX Runtime's TensorRT or OpenVINO
providers), for inspection, and to skip those seconds at start-up.
"""

from __future__ import annotations

import argparse
import json
import time

from zoa_ros.core.model.pack import ModelPack
from zoa_ros.tools.packs import add_pack_argument, resolve_pack


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="int8 ONNX (QDQ) export of a model pack",
                       description=__doc__)
    add_pack_argument(p)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--no-check", action="store_true",
                   help="skip loading the file in ONNX Runtime to check it runs on integer "
                        "kernels")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoa_ros.core.backend.export import describe, export_pack  # needs onnx

    pack = ModelPack.load(resolve_pack(args.pack))
    start = time.perf_counter()
    export = export_pack(pack)
    seconds = time.perf_counter() - start
    export.save(args.out)
    info = describe(export.model)
    print(f"wrote {args.out}: {info['bytes'] / 1e6:.1f} MB, {info['folds']} BatchNorms folded, "
          f"{info['int8_weights']} int8 weight tensors, exported in {seconds:.1f} s")
    print(f"graph: {json.dumps(info['ops'])}")
    if not args.no_check:
        from zoa_ros.core.backend.ort import OrtBackend
        backend = OrtBackend(export, pack.build_model())
        print(f"ONNX Runtime ({backend.provider}) runs it as: {json.dumps(backend.ops)}")
    return 0
