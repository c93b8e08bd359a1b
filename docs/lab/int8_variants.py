"""What each choice of the int8 export costs in fidelity (docs/lab/int8.md §8.1).

    .venv/bin/python docs/lab/int8_variants.py --pack out/packs/lite0_w8a8.zoapack \
        --data ../shared/data/imagenet-sample-dev [--limit N]

Prints, for every variant, the share of photos whose top-1 equals the simulation's and the
top-1 accuracy:

* the export as shipped on ONNX Runtime, with and without its exact u8u8 path
  (``session.x64quantprecision``; without it, x86 CPUs lacking VNNI saturate u8s8 products),
  and single-frame p50 of both (one thread);
* the export with 7-bit weights (``round(q/2)``, scale x 2: what ONNX Runtime's quantizer calls
  ``reduce_range``, which avoids the saturation without the slower path);
* the simulation with each quantization the export adds, alone and together (forward hooks on
  the torch model): the residual branch on the sum's grid, the shortcut on its own layer's
  input grid (what an integer residual add needs), the head on [0, 6] in 255 steps, the image
  input on the int8 grid 1/127 (an integer stem).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from timm.models._efficientnet_blocks import InvertedResidual

from zoa_ros.core.backend.export import export_pack
from zoa_ros.core.backend.ort import OrtBackend
from zoa_ros.core.data.labelled_images import labelled_images
from zoa_ros.core.files.images import read_rgb
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.quant.fake_quant import fake_quant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pack", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int)
    args = p.parse_args()
    torch.set_num_threads(1)
    pack = ModelPack.load(args.pack)
    pairs = labelled_images(args.data)[: args.limit]
    x = Preprocessor(pack.data_config)([read_rgb(path) for path, _ in pairs])
    y = torch.tensor([c for _, c in pairs])
    sim = pack.build_model()
    reference = _batched(sim, x)

    def report(name: str, logits: torch.Tensor, extra: str = "") -> None:
        same = 100.0 * float((logits.argmax(1) == reference.argmax(1)).float().mean())
        top1 = 100.0 * float((logits.argmax(1) == y).float().mean())
        print(f"{name:58s} same top-1 {same:5.1f} %  top-1 {top1:5.1f}{extra}")

    report("simulation (the reference)", reference)
    export = export_pack(pack)
    for exact in (True, False):
        backend = OrtBackend(export, sim)
        if not exact:
            backend._published = _without_precision(backend)
        report(f"export on ONNX Runtime, u8{'u8 (exact)' if exact else 's8 (default)'}",
               _batched(backend.predict, x), f"  p50 {_p50(backend.predict, x):.1f} ms")
    report("export with 7-bit weights (reduce_range)",
           _batched(OrtBackend(_seven_bit(export), sim).predict, x))
    hooks = {"branch": _branch, "shortcut": _shortcut, "head": _head, "input": _input}
    for names in (["branch"], ["shortcut"], ["head"], ["input"], ["branch", "head"],
                  ["branch", "shortcut", "head"]):
        model = pack.build_model()
        handles = [h for n in names for h in hooks[n](model)]
        report(f"simulation + {' + '.join(names)} quantized", _batched(model, x))
        for h in handles:
            h.remove()


def _batched(forward, x: torch.Tensor, size: int = 50) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([forward(x[i:i + size]) for i in range(0, len(x), size)])


def _p50(forward, x: torch.Tensor, runs: int = 100) -> float:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        forward(x[i % len(x)].unsqueeze(0))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50))


def _without_precision(backend: OrtBackend):
    """The backend's published session rebuilt without ``session.x64quantprecision``."""
    import dataclasses

    ort = backend._ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(backend._bytes, so, providers=[backend.provider])
    return dataclasses.replace(backend._published, session=session)


def _seven_bit(export):
    """The export with every integer convolution's weights on a 7-bit grid."""
    model = onnx.ModelProto()
    model.CopyFrom(export.model)
    inits = {t.name: t for t in model.graph.initializer}

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    for fold in export.folds:
        if fold.bias_scale is None:
            continue   # the float stem
        q = numpy_helper.to_array(inits[f"{fold.conv}.weight_q"]).astype(np.int64)
        put(f"{fold.conv}.weight_q", np.clip(np.rint(q / 2), -64, 63).astype(np.int8))
        put(fold.weight_scale, (numpy_helper.to_array(inits[fold.weight_scale]) * 2)
            .astype(np.float32))
        bias = numpy_helper.to_array(inits[fold.bias]).astype(np.float64)
        put(fold.bias, np.rint(bias / 2).astype(np.int32))
        put(fold.bias_scale, (numpy_helper.to_array(inits[fold.bias_scale]) * 2)
            .astype(np.float32))
    return type(export)(model, export.folds, export.pack_fingerprint)


def _residual_blocks(model):
    blocks = [b for stage in model.blocks for b in stage]
    for i, block in enumerate(blocks):
        if isinstance(block, InvertedResidual) and block.has_skip:
            after = blocks[i + 1] if i + 1 < len(blocks) else None
            nxt = after.conv_pw.input_quant if after is not None and hasattr(after, "conv_pw") \
                else model.conv_head.input_quant
            yield block, nxt


def _branch(model):
    """The residual branch's BatchNorm output on the grid of the sum's quantizer."""
    return [block.bn3.register_forward_hook(
        lambda _m, _i, out, q=q: fake_quant(out, q.scale, -128, 127))
        for block, q in _residual_blocks(model)]


def _shortcut(model):
    """The shortcut on its block's input grid (the input quantizer of its first conv)."""
    return [block.register_forward_pre_hook(
        lambda _m, args, q=block.conv_pw.input_quant: (fake_quant(args[0], q.scale, -128, 127),))
        for block, _ in _residual_blocks(model)]


def _head(model):
    return [model.bn2.register_forward_hook(
        lambda _m, _i, out: fake_quant(out, torch.tensor(6 / 255), 0, 255))]


def _input(model):
    return [model.register_forward_pre_hook(
        lambda _m, args: (fake_quant(args[0], torch.tensor(1 / 127), -127, 127),))]


if __name__ == "__main__":
    main()
