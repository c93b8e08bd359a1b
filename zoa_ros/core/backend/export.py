"""A model pack as a standard ONNX QDQ graph with exactly the pack's calibrated scales.

How the simulation maps onto integer kernels (docs/QUANTIZATION.md, "The int8 export"):

* weights: int8 ``round(w / s_w)`` per output channel with the pack's scales ``s_w`` (W6/W4
  values lie on the same grid), dequantized per channel;
* BatchNorm: folded into the convolution before it (:mod:`.fold`): the weight scale becomes
  ``s_w·a`` and the bias ``a·(bias + bias correction) + b``;
* activations: every quantizer of the simulation becomes a QuantizeLinear/DequantizeLinear pair
  with its scale, uint8 with zero point 0 for an unsigned grid and 128 for a signed one. A ReLU6
  (or ReLU) before it is dropped where the quantizer's grid saturates there anyway; where the
  grid reaches past 6 (or is narrower than 8 bits) the clamp moves into the integer domain, a
  ``Clip`` on the quantized tensor, exactly the simulation's numbers;
* tensors the simulation keeps in float but an integer convolution must end in a quantizer:
  the convolution of a residual branch takes the range of the sum's quantizer (the next layer's
  input quantizer) on the 8-bit grid, while the add and the shortcut stay float as in the
  simulation, except for a shortcut that is itself a convolution's output (the first residual
  block of a stage), which reads that convolution's quantized output; a convolution feeding
  global pooling through a ReLU6 takes the grid ``[0, 6]`` in 255 steps; pooling, the
  activation shift and the classifier's float output stay as in the simulation;
* the stem convolution (weight-only in the pack) runs in float on the float image.

The torch model is traced once with marker ops (``zoa.Mark``) where the simulation quantizes a
weight or an activation and where a BatchNorm sits; the graph rewrite turns the markers into
the QDQ form above and refuses what it cannot fold, naming the layer. The result carries the
pack's fingerprint in its metadata, and a table of the folds so that a runtime can apply new
normalizations later (:mod:`.fold`).
"""

from __future__ import annotations

import contextlib
import io
import json
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto
from timm.layers import Conv2dSame
from torch import nn

from zoa_ros.core.backend.fold import BnNorm, Fold, folds_from_json, folds_to_json
from zoa_ros.core.backend.graph import Graph
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.quant.fake_quant import qrange
from zoa_ros.core.quant.quantizers import ActQuantizer, QuantLayer

FORMAT = "zoa_ros.int8"
FORMAT_VERSION = 1
OPSET = 17
INPUT, SHIFT, LOGITS = "input", "pre_logits_shift", "logits"
META_FORMAT, META_VERSION = "zoa_ros.format", "zoa_ros.format_version"
META_PACK, META_FOLDS = "zoa_ros.pack_fingerprint", "zoa_ros.folds"
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Identity)


class ExportError(ValueError):
    """A model or graph the int8 export cannot produce, naming the layer."""


class ExportMismatch(ValueError):
    """An int8 export that does not belong to the pack it is used with."""


@dataclass
class Int8Export:
    """An exported pack: the ONNX model and the folds a runtime updates."""

    model: onnx.ModelProto
    folds: list[Fold]
    pack_fingerprint: str

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()

    def save(self, path: str) -> None:
        from zoa_ros.core.files.atomic import atomic_write_bytes
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<onnx>") -> Int8Export:
        try:
            model = onnx.load_from_string(data)
        except Exception as e:   # protobuf raises its own DecodeError
            raise ExportMismatch(f"{name}: not a readable ONNX file ({e})") from e
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get(META_FORMAT) != FORMAT:
            raise ExportMismatch(f"{name}: not a zoa_ros int8 export (no {META_FORMAT!r} "
                                 "metadata; make one with 'zoa-ros export')")
        if int(meta.get(META_VERSION, 0)) > FORMAT_VERSION:
            raise ExportMismatch(f"{name}: int8 export format {meta[META_VERSION]} is newer "
                                 f"than this zoa_ros supports ({FORMAT_VERSION})")
        return cls(model, folds_from_json(meta[META_FOLDS]), meta[META_PACK])

    @classmethod
    def load(cls, path: str) -> Int8Export:
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), str(path))

    def check_pack(self, pack: ModelPack, name: str = "int8 export") -> None:
        """Refuse an export of another pack (or of this pack before it changed)."""
        if self.pack_fingerprint != pack.fingerprint:
            raise ExportMismatch(
                f"{name} was made from pack {self.pack_fingerprint[:12]}, not from this pack "
                f"({pack.fingerprint[:12]}): the scales would not be the pack's; export it "
                "again with 'zoa-ros export --pack PACK --out FILE'")


def export_pack(pack: ModelPack, model: nn.Module | None = None) -> Int8Export:
    """Export ``pack`` (its quantized model, rebuilt unless ``model`` is that model with its
    original BatchNorms) to an ONNX QDQ graph: input ``input`` (N x 3 x H x W, normalized),
    ``pre_logits_shift`` (the activation shift added before the classifier; zeros for none),
    output ``logits``."""
    if pack.family != "batchnorm":
        raise ExportError(f"{pack.spec.name}: the int8 export folds BatchNorm into convolutions; "
                          f"a {pack.family} model has none to fold (use backend 'torch')")
    if not pack.quant.enabled:
        raise ExportError("the int8 export needs a quantized pack (this one is 'none')")
    model = (model or pack.build_model()).eval()
    size = tuple(pack.data_config["input_size"])
    raw = _trace(model, size)
    graph = Graph(raw)
    folds = _rewrite(graph, model)
    onnx_model = graph.finish()
    onnx_model.producer_name = "zoa_ros"
    meta = {META_FORMAT: FORMAT, META_VERSION: str(FORMAT_VERSION),
            META_PACK: pack.fingerprint, META_FOLDS: folds_to_json(folds),
            "zoa_ros.quant": pack.quant.name, "zoa_ros.model": pack.spec.name}
    onnx.helper.set_model_props(onnx_model, meta)
    onnx.checker.check_model(onnx_model)
    return Int8Export(onnx_model, folds, pack.fingerprint)


def export_float(model: nn.Module, size: tuple[int, ...]) -> bytes:
    """A float timm model as plain ONNX (``torch.onnx.export`` as a user would run it; input
    ``input``, output ``logits``): the float baseline of ``zoa-ros bench model``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *size),), buffer, opset_version=OPSET,
                          dynamo=False, input_names=[INPUT], output_names=[LOGITS],
                          dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"}})
    return buffer.getvalue()


# ---- tracing with markers --------------------------------------------------------------------
class _Mark(torch.autograd.Function):
    """Identity in eager mode (it returns ``value``); a ``zoa.Mark`` node of ``x`` in ONNX."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor, kind: str, name: str) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def symbolic(g, x, value, kind: str, name: str):
        out = g.op("zoa::Mark", x, kind_s=kind, name_s=name)
        out.setType(value.type())   # shape and type of the eager result, for what follows
        return out


def _mark(x: torch.Tensor, kind: str, name: str, value: torch.Tensor | None = None):
    return _Mark.apply(x, x if value is None else value, kind, name)


class _Head(nn.Module):
    """Features, pre-logits plus the activation shift, classifier: ZOA's shifted prediction."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        pre = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.get_classifier()(pre + shift)


def _trace(model: nn.Module, size: tuple[int, ...]) -> onnx.ModelProto:
    x = torch.zeros(1, *size)
    shift = torch.zeros(model.num_features)
    with _markers(model, x), torch.no_grad():
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(   # eval: the exporter puts the wrapper's mode back after
                _Head(model).eval(), (x, shift), buffer, opset_version=OPSET, dynamo=False,
                input_names=[INPUT, SHIFT], output_names=[LOGITS],
                dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"}},
                custom_opsets={"zoa": 1}, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _markers(model: nn.Module, example: torch.Tensor) -> Iterator[None]:
    """Within the block the model's quantizers, quantized layers and BatchNorms emit markers."""
    pads = _same_pads(model, example)
    patched = []
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            forward = _act_forward(module, name)
        elif isinstance(module, QuantLayer):
            forward = _layer_forward(module, name, pads.get(name))
        elif isinstance(module, nn.BatchNorm2d):
            forward = _bn_forward(module, name)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not name.endswith(".layer"):
            raise ExportError(f"layer {name!r} ({type(module).__name__}) is not quantized in "
                              "the pack; the int8 export needs every convolution quantized")
        else:
            continue
        patched.append(module)
        module.forward = types.MethodType(forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _same_pads(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int, int, int]]:
    """The static padding of every TF-"same" convolution at the model's input size."""
    shapes: dict[str, tuple[int, int]] = {}
    handles = [m.register_forward_pre_hook(
        lambda _m, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, m in model.named_modules()
        if isinstance(m, QuantLayer) and isinstance(m.layer, Conv2dSame)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    pads = {}
    for name, (h, w) in shapes.items():
        conv = model.get_submodule(name).layer
        ph = _same(h, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = _same(w, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        pads[name] = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return pads


def _same(size: int, kernel: int, stride: int, dilation: int) -> int:
    return max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _act_forward(quantizer: ActQuantizer, name: str):
    eager = type(quantizer).forward

    def forward(self, x):
        return _mark(x, "act", name, eager(self, x))
    return forward


def _layer_forward(layer: QuantLayer, name: str, pad: tuple[int, int, int, int] | None):
    inner = layer.layer
    if isinstance(inner, nn.Conv2d) and isinstance(inner.padding, str) and pad is None:
        raise ExportError(f"convolution {name!r} uses padding {inner.padding!r}")

    def forward(self, x):
        if self.input_quant is not None:
            x = self.input_quant(x)
        w = _mark(inner.weight, "weight", name)
        if isinstance(inner, nn.Linear):
            return F.linear(x, w, inner.bias)
        padding = inner.padding
        if pad is not None:   # TF "same": a marker the rewrite turns into the conv's pads
            x, padding = _mark(x, "pad", ",".join(map(str, pad)), F.pad(x, pad)), 0
        return F.conv2d(x, w, inner.bias, inner.stride, padding, inner.dilation, inner.groups)
    return forward


def _bn_forward(bn: nn.BatchNorm2d, name: str):
    drop, act = getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())
    for part in (drop, act):
        if not isinstance(part, (*_ACTIVATIONS, nn.Dropout)):
            raise ExportError(f"BatchNorm {name!r} is followed by {type(part).__name__}; the "
                              "int8 export runs ReLU and ReLU6 on integer kernels only")

    def forward(self, x):
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                         0.0, self.eps)
        return act(drop(_mark(x, "bn", name, y)))
    return forward


# ---- the graph rewrite -----------------------------------------------------------------------
def _marks(graph: Graph, kind: str) -> list[onnx.NodeProto]:
    return [n for n in graph.nodes if n.op_type == "Mark" and _attr(n, "kind") == kind]


def _attr(node: onnx.NodeProto, key: str):
    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a).decode() if a.type == a.STRING else \
                onnx.helper.get_attribute_value(a)
    return None


def _rewrite(graph: Graph, model: nn.Module) -> list[Fold]:
    modules = dict(model.named_modules())
    _drop_identities(graph)
    _fold_pads(graph)
    for node in _marks(graph, "weight"):
        _quantize_weight(graph, node, modules[_attr(node, "name")])
    for node in _marks(graph, "act"):
        _quantize_activation(graph, node, modules[_attr(node, "name")])
    folds = [_fold_bn(graph, node, modules[_attr(node, "name")]) for node in _marks(graph, "bn")]
    _quantize_branches(graph)
    leftover = [f"{_attr(n, 'kind')} {_attr(n, 'name')}" for n in graph.nodes
                if n.op_type == "Mark"]
    if leftover:
        raise ExportError(f"unconverted markers: {leftover}")
    return folds


def _drop_identities(graph: Graph) -> None:
    for node in [n for n in graph.nodes if n.op_type == "Identity"]:
        if not graph.is_graph_output(node.output[0]):
            graph.bypass(node)


def _fold_pads(graph: Graph) -> None:
    """A TF-"same" padding marker becomes the pads of the convolution it feeds."""
    for mark in _marks(graph, "pad"):
        left, right, top, bottom = (int(v) for v in _attr(mark, "name").split(","))
        users = graph.consumers(mark.output[0])
        if len(users) != 1 or users[0].op_type != "Conv":
            raise ExportError(f"TF 'same' padding feeds {[u.name for u in users]}, not one "
                              "convolution")
        old = _attr(users[0], "pads") or [0, 0, 0, 0]   # [top, left, bottom, right]
        _set_attr(users[0], "pads", [old[0] + top, old[1] + left, old[2] + bottom,
                                     old[3] + right])
        graph.bypass(mark)


def _set_attr(node: onnx.NodeProto, key: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == key:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(key, value))


def _quantize_weight(graph: Graph, node: onnx.NodeProto, layer: QuantLayer) -> None:
    name = _attr(node, "name")
    w = graph.array(node.input[0])
    if w is None:
        raise ExportError(f"weights of {name!r} are not a constant")
    scale = layer.weight_scale.detach().double().numpy()
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.rint(w / scale.reshape(shape))
    qmin, qmax = qrange(layer.w_bits, signed=True)
    if not np.allclose(q * scale.reshape(shape), w, rtol=1e-5, atol=1e-7) or q.min() < qmin \
            or q.max() > qmax:
        raise ExportError(f"weights of {name!r} are not on the pack's {layer.w_bits}-bit grid")
    w_q = graph.set_array(f"{name}.weight_q", q.astype(np.int8))
    w_s = graph.set_array(f"{name}.weight_scale", scale.astype(np.float32))
    w_z = graph.set_array(f"{name}.weight_zero", np.zeros(len(scale), np.int8))
    graph.remove(node)
    graph.add("DequantizeLinear", [w_q, w_s, w_z], [node.output[0]], hint=f"{name}.weight_dq",
              axis=0)


def _fold_bn(graph: Graph, node: onnx.NodeProto, bn: nn.BatchNorm2d) -> Fold:
    """Fold the source BatchNorm into the convolution before it; where the convolution's
    input is quantized its bias becomes int32 on the grid ``s_x·scale`` (the bias of a QDQ
    convolution that ONNX Runtime fuses into ``QLinearConv``)."""
    name = _attr(node, "name")
    conv = graph.producer(node.input[0])
    if conv is None or conv.op_type != "Conv" or len(graph.consumers(conv.output[0])) != 1:
        raise ExportError(f"BatchNorm {name!r} does not directly follow a convolution of its "
                          "own; the int8 export folds every BatchNorm into the convolution "
                          "before it")
    weight_dq = graph.producer(conv.input[1])
    layer = weight_dq.input[0].removesuffix(".weight_q")
    scale = graph.array(weight_dq.input[1]).astype(np.float64)
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = graph.array(conv.input[2]).astype(np.float64) if has_bias else np.zeros_like(scale)
    source = graph.producer(conv.input[0])
    if source is not None and source.op_type == "DequantizeLinear":
        fold = Fold(name, layer, weight_dq.input[1], f"{layer}.bias_q", f"{layer}.bias_scale",
                    float(graph.array(source.input[1])))
    else:
        fold = Fold(name, layer, weight_dq.input[1], f"{layer}.bias", None, None)
    for key, value in fold.values(scale, bias, *_source_norm(bn)).items():
        graph.set_array(key, value)
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = fold.bias
    if fold.bias_scale is not None:
        zero = graph.set_array(f"{layer}.bias_zero", np.zeros(len(scale), np.int32))
        conv.input[2] = graph.add("DequantizeLinear", [fold.bias, fold.bias_scale, zero],
                                  hint=f"{layer}.bias_dq", axis=0).output[0]
    graph.remove(node)
    conv.output[0] = node.output[0]
    return fold


def _source_norm(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    weight = bn.weight if bn.weight is not None else torch.ones(bn.num_features)
    bias = bn.bias if bn.bias is not None else torch.zeros(bn.num_features)
    return BnNorm(bn.running_mean, bn.running_var, weight, bias, bn.eps).scale_shift()


def _quantize_activation(graph: Graph, node: onnx.NodeProto, quant: ActQuantizer) -> None:
    """A simulation quantizer as Q -> [integer Clip] -> DQ, absorbing a ReLU/ReLU6 before it.

    Every activation is uint8: an unsigned grid with zero point 0, a signed one with zero point
    128 (the same grid shifted). ONNX Runtime fuses a convolution only when its input and
    output types agree, and uint8 activations with int8 weights are its fast x86 path."""
    name = _attr(node, "name")
    scale, signed = float(quant.scale), bool(quant.signed)
    qmin, qmax = qrange(quant.bits, signed)
    zero = 128 if signed else 0
    qmin, qmax = qmin + zero, qmax + zero
    source = node.input[0]
    act = graph.producer(source)
    if (act is not None and act.op_type in ("Relu", "Clip") and not signed
            and len(graph.consumers(act.output[0])) == 1):
        top = _clip_max(graph, act)
        if top is not None:
            qmax = min(qmax, int(np.rint(top / scale)))
        graph.bypass(act)
        source = node.input[0]
    s = graph.set_array(graph.name(f"{name}.scale"), np.array(scale, np.float32))
    z = graph.set_array(graph.name(f"{name}.zero"), np.array(zero, np.uint8))
    q = graph.add("QuantizeLinear", [source, s, z], hint=f"{name}.q")
    graph.fine_scale[q.name] = scale * 2.0 ** (quant.bits - 8)
    out = q.output[0]
    if qmin > 0 or qmax < 255:
        cmin = graph.set_array(graph.name(f"{name}.qmin"), np.array(qmin, np.uint8))
        cmax = graph.set_array(graph.name(f"{name}.qmax"), np.array(qmax, np.uint8))
        out = graph.add("Clip", [out, cmin, cmax], hint=f"{name}.clip").output[0]
    graph.remove(node)
    graph.add("DequantizeLinear", [out, s, z], [node.output[0]], hint=f"{name}.dq")


def _clip_max(graph: Graph, act: onnx.NodeProto) -> float | None:
    """The upper bound of a ReLU6-style ``Clip`` (``None`` for ReLU or no bound); refuses a
    clip whose lower bound is not 0."""
    if act.op_type == "Relu":
        return None
    low = graph.array(act.input[1]) if len(act.input) > 1 and act.input[1] else None
    high = graph.array(act.input[2]) if len(act.input) > 2 and act.input[2] else None
    if low is None or float(low) != 0.0:
        raise ExportError(f"activation {act.name!r} clips below at {low}, not 0")
    return None if high is None else float(high)


def _quantize_branches(graph: Graph) -> None:
    """Quantize the outputs of integer convolutions that the simulation leaves in float: those
    that feed a residual add or global pooling; a quantized output that also feeds a shortcut
    lends it its dequantized value (the convolution then has one consumer and fuses)."""
    for conv in [n for n in graph.nodes if n.op_type == "Conv"]:
        if not _dq_input(graph, conv):
            continue   # the float stem
        out = conv.output[0]
        users = graph.consumers(out)
        quantizers = [u for u in users if u.op_type == "QuantizeLinear"]
        if quantizers:
            _reuse(graph, out, quantizers[0])   # e.g. also the next block's shortcut
        elif len(users) == 1 and users[0].op_type == "Add":
            _quantize_add(graph, users[0], conv.name)
        elif len(users) == 1 and users[0].op_type == "Clip" \
                and [u.op_type for u in graph.consumers(users[0].output[0])] == \
                ["GlobalAveragePool"]:
            top = _clip_max(graph, users[0])
            if top is None:
                raise ExportError(f"convolution {conv.name!r} feeds global pooling through an "
                                  "unbounded activation; the int8 export has no scale for it")
            graph.bypass(users[0])
            _insert_qdq(graph, out, top / 255.0, 0, f"{conv.name}.out")
        else:
            kinds = [u.op_type for u in users]
            raise ExportError(f"convolution {conv.name!r} feeds {kinds}; the int8 export "
                              "quantizes only outputs that feed a quantizer, a residual add "
                              "or ReLU6 + global pooling")


def _dq_input(graph: Graph, node: onnx.NodeProto) -> bool:
    source = graph.producer(node.input[0])
    return source is not None and source.op_type == "DequantizeLinear"


def _reuse(graph: Graph, tensor: str, q: onnx.NodeProto) -> None:
    """Every float consumer of ``tensor`` other than quantizers reads ``q``'s full 8-bit
    dequantized value instead (without the integer clip of a narrower grid)."""
    others = [u for u in graph.consumers(tensor) if u.op_type != "QuantizeLinear"]
    if not others:
        return
    dq = next((u for u in graph.consumers(q.output[0]) if u.op_type == "DequantizeLinear"),
              None)
    if dq is None:
        dq = graph.add("DequantizeLinear", [q.output[0], q.input[1], q.input[2]],
                       hint=f"{q.name}.dq8")
    for user in others:
        graph.replace_input(user, tensor, dq.output[0])


def _quantize_add(graph: Graph, add: onnx.NodeProto, what: str) -> None:
    """A residual add: the convolution branch takes the range of its sum's quantizer (the next
    layer's input quantizer) on the 8-bit grid (the same grid at W8A8, a finer one for narrower
    quantizers); the add and a shortcut from the previous add stay float."""
    quantizers = [u for u in graph.consumers(add.output[0]) if u.op_type == "QuantizeLinear"]
    if len(quantizers) != 1:
        raise ExportError(f"residual add after {what!r} is not followed by one quantizer")
    q = quantizers[0]
    scale, zero = graph.fine_scale[q.name], graph.array(q.input[2])   # its range, 8 bits
    for tensor in list(add.input):
        producer = graph.producer(tensor)
        if producer is not None and producer.op_type in ("DequantizeLinear", "Add"):
            continue
        if producer is not None and producer.op_type == "Conv":
            _insert_qdq(graph, tensor, float(scale), int(zero), f"{what}.out", add)
        else:
            raise ExportError(f"residual add after {what!r} reads {tensor!r}, which no "
                              "quantizer covers")


def _insert_qdq(graph: Graph, tensor: str, scale: float, zero: int, hint: str,
                only: onnx.NodeProto | None = None) -> None:
    """A uint8 quantize/dequantize pair on ``tensor`` for its consumers (or ``only``)."""
    users = [only] if only is not None else graph.consumers(tensor)
    s = graph.set_array(graph.name(f"{hint}.scale"), np.array(scale, np.float32))
    z = graph.set_array(graph.name(f"{hint}.zero"), np.array(zero, np.uint8))
    q = graph.add("QuantizeLinear", [tensor, s, z], hint=f"{hint}.q")
    dq = graph.add("DequantizeLinear", [q.output[0], s, z], hint=f"{hint}.dq")
    for user in users:
        graph.replace_input(user, tensor, dq.output[0])


def describe(model: onnx.ModelProto) -> dict:
    """Op counts and metadata of an export (``zoa-ros export`` prints it)."""
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    meta = {p.key: p.value for p in model.metadata_props if p.key != META_FOLDS}
    return {"ops": dict(sorted(ops.items())), "metadata": meta,
            "folds": len(json.loads(next(p.value for p in model.metadata_props
                                         if p.key == META_FOLDS))),
            "bytes": model.ByteSize(), "int8_weights": sum(
                1 for t in model.graph.initializer
                if t.data_type == TensorProto.INT8 and t.name.endswith(".weight_q"))}
