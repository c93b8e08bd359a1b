"""The int8 export on ONNX Runtime: classify, and apply new normalizations by a session swap.

A session is immutable here: :meth:`OrtBackend.apply` builds the next one (the folded weight
scales and biases of :mod:`.fold` as initializer overrides, the int8 weights shared) on the
calling thread - the engine's adaptation thread - and publishes it together with the activation
shift as one object in one reference assignment. :meth:`OrtBackend.predict` reads that
reference once per call, so a frame is classified entirely with the old or entirely with the
new parameters.

Integer kernels are checked, not assumed: the first session's optimized graph must hold no
float convolution but the stem (weight-only in the pack), else the backend is refused with the
names of what stayed in float. On x86 the session asks for ONNX Runtime's exact u8u8 products
(``session.x64quantprecision``): without VNNI its u8s8 kernels add pairs of products in 16
bits and saturate with the pack's full 8-bit weights (docs/lab/int8.md §2).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from zoa_ros.core.backend.base import BackendError
from zoa_ros.core.backend.export import INPUT, LOGITS, SHIFT, ExportError, Int8Export
from zoa_ros.core.backend.fold import BnNorm

PROVIDER = "CPUExecutionProvider"
# Operators that run on integer kernels once ONNX Runtime has fused the QDQ graph.
INTEGER_OPS = frozenset({"QLinearConv", "QLinearAdd", "QLinearMatMul", "QGemm",
                         "QLinearGlobalAveragePool", "ConvInteger", "MatMulInteger"})


def import_onnxruntime():
    """The ``onnxruntime`` module, or :class:`BackendError` saying how to get it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError("backend 'onnxruntime' needs the onnxruntime package "
                           "(pip install -r requirements.txt)") from e
    return onnxruntime


@dataclass(frozen=True)
class _Published:
    """One session and the activation shift that goes with it; replaced, never changed."""

    session: object
    shift: np.ndarray
    version: int
    overrides: tuple = ()   # the OrtValues the session reads its initializers from
    values: dict = field(default_factory=dict)   # the folded initializers, by name


class OrtBackend:
    """Classifies normalized N x 3 x H x W frames with an int8 export on ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, export: Int8Export, reference: nn.Module, threads: int = 1,
                 provider: str = PROVIDER, optimize: bool = True) -> None:
        ort = import_onnxruntime()
        if provider not in ort.get_available_providers():
            raise BackendError(f"ONNX Runtime {ort.__version__} has no {provider} here "
                               f"(available: {ort.get_available_providers()})")
        self._ort = ort
        self.provider = provider
        self.threads = int(threads)
        self._optimize = optimize
        self._bytes = export.to_bytes()
        self.folds = export.folds
        self._base = {}
        for fold in self.folds:
            layer = reference.get_submodule(fold.conv)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(layer.weight_scale)
            self._base[fold.bn] = (layer.weight_scale.detach().double().cpu().numpy(),
                                   bias.detach().double().cpu().numpy())
        self._shift_size = int(reference.num_features)
        self._optimized: bytes | None = None   # the fused graph, once checked (see _session)
        self.ops = self._check_integer_kernels()
        session, overrides = self._session({})
        self._published = _Published(session, np.zeros(self._shift_size, np.float32), 0,
                                     overrides)

    @property
    def version(self) -> int:
        """Parameter sets applied so far (0: the export's own, the pack's source BatchNorms)."""
        return self._published.version

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` with the published session and shift."""
        published = self._published   # one read: session and shift belong together
        feed = {INPUT: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                SHIFT: published.shift}
        return torch.from_numpy(published.session.run([LOGITS], feed)[0])

    def apply(self, norms: Mapping[str, BnNorm], shift: torch.Tensor | None = None) -> None:
        """Fold ``norms`` (every folded BatchNorm's, by name) and the pre-logits ``shift`` into
        a new session and publish it; predictions in flight finish on the old one. Values
        equal to the published ones keep the session."""
        missing = [f.bn for f in self.folds if f.bn not in norms]
        if missing:
            raise ValueError(f"no normalization given for BatchNorm {missing[0]!r}")
        values: dict[str, np.ndarray] = {}
        for fold in self.folds:
            a, b = norms[fold.bn].scale_shift()
            values.update(fold.values(*self._base[fold.bn], a, b))
        shift_np = np.zeros(self._shift_size, np.float32) if shift is None else \
            shift.detach().cpu().float().numpy().reshape(-1)
        if shift_np.shape != (self._shift_size,):
            raise ValueError(f"activation shift of {shift_np.size} values, the model's "
                             f"pre-logits feature has {self._shift_size}")
        current = self._published
        if np.array_equal(shift_np, current.shift) and current.values.keys() == values.keys() \
                and all(np.array_equal(v, current.values[k]) for k, v in values.items()):
            return   # nothing changed (e.g. a step of 'none'): keep the session
        session, overrides = self._session(values)
        self._published = _Published(session, np.ascontiguousarray(shift_np),
                                     current.version + 1, overrides, values)

    # ---- sessions -------------------------------------------------------------------------
    def _options(self, optimized_path: str | None = None, optimized: bool | None = None):
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.x64quantprecision", "1")
        if not (self._optimize if optimized is None else optimized):
            so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if optimized_path is not None:
            so.optimized_model_filepath = optimized_path
        return so

    def _session(self, values: Mapping[str, np.ndarray]):
        """A session with ``values`` overriding the export's initializers.

        Built from the graph ONNX Runtime optimized on this machine at start (QDQ already
        fused, optimizations off: about a fifth of the time of a fresh optimization, bitwise
        the same results), where that graph still reads every folded initializer by name."""
        if self._optimized is not None:
            so = self._options(optimized=False)
            source = self._optimized
            values = {k: v for k, v in values.items() if k in self._optimized_inputs}
        else:
            so, source = self._options(), self._bytes
        overrides = tuple((name, self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)))
                          for name, v in values.items())
        for name, value in overrides:
            so.add_initializer(name, value)
        return self._ort.InferenceSession(source, so, providers=[self.provider]), overrides

    def _check_integer_kernels(self) -> dict[str, int]:
        """Op counts of the session's optimized graph; :class:`BackendError` naming the
        convolutions left in float when the runtime did not fuse the QDQ graph."""
        import onnx
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "optimized.onnx")
            self._ort.InferenceSession(self._bytes, self._options(path),
                                       providers=[self.provider])
            optimized = onnx.load(path)
        graph = optimized.graph
        ops: dict[str, int] = {}
        for node in graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        stem_inputs = {INPUT}
        floating = [n.name for n in graph.node
                    if n.op_type in ("Conv", "FusedConv") and not stem_inputs & set(n.input)
                    and not _after_input(graph, n)]
        if floating or not INTEGER_OPS & set(ops):
            raise BackendError(
                f"ONNX Runtime {self._ort.__version__} ({self.provider}) did not fuse the int8 "
                f"export into integer kernels (convolutions left in float: "
                f"{floating[:4] or 'all'}); it would run slower than float, so it is refused "
                "(use backend 'torch')")
        read = {name for node in graph.node for name in node.input}
        if all(f.weight_scale in read and f.bias in read for f in self.folds):
            self._optimized = optimized.SerializeToString()
            self._optimized_inputs = read
        return ops


def _after_input(graph, node) -> bool:
    """Whether ``node`` reads the graph input through layout nodes only (the float stem)."""
    producers = {o: n for n in graph.node for o in n.output}
    tensor = node.input[0]
    while tensor in producers:
        prev = producers[tensor]
        if prev.op_type not in ("Transpose", "ReorderInput", "Pad"):
            return False
        tensor = prev.input[0]
    return tensor == INPUT


__all__ = ["BackendError", "ExportError", "OrtBackend", "float_session", "import_onnxruntime"]


def float_session(model: bytes, threads: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """A float ONNX model (``export_float``) on ONNX Runtime's CPU provider, as a forward
    function: the float baseline the int8 runtime is compared with."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model, so, providers=[PROVIDER])

    def forward(x: torch.Tensor) -> torch.Tensor:
        feed = {INPUT: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        return torch.from_numpy(session.run([LOGITS], feed)[0])
    return forward
