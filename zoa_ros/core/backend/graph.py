"""A small editable view of an ONNX graph: nodes by the tensors they make and use, initializers
as numpy arrays, new node and tensor names, and a topological sort to finish.

The ``onnx`` package gives the protobufs and ``onnx.helper``; it has no graph-rewriting API, and
the rewrites of the int8 export (folding, quantize/dequantize pairs) need only these few lines.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Graph:
    """The nodes of ``model.graph`` as a list (edited in place) plus lookup helpers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        # Per QuantizeLinear node of a simulation quantizer: the scale of an 8-bit grid over its
        # range (its own scale at 8 bits, finer for narrower quantizers).
        self.fine_scale: dict[str, float] = {}
        self._ids = itertools.count()

    # ---- lookups --------------------------------------------------------------------------
    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if tensor in n.output), None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if tensor in n.input]

    def is_graph_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.graph.output)

    def array(self, tensor: str) -> np.ndarray | None:
        """An initializer's or a Constant node's value; ``None`` for a computed tensor."""
        if tensor in self.inits:
            return numpy_helper.to_array(self.inits[tensor])
        node = self.producer(tensor)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    # ---- edits ----------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def set_array(self, tensor: str, value: np.ndarray) -> str:
        self.inits[tensor] = numpy_helper.from_array(np.array(value, order="C"), tensor)
        return tensor

    def add(self, op: str, inputs: Iterable[str], outputs: Iterable[str] | None = None,
            hint: str | None = None, **attrs: object) -> onnx.NodeProto:
        name = self.name(hint or op)
        node = helper.make_node(op, list(inputs), list(outputs or [f"{name}_out"]), name=name,
                                **attrs)
        self.nodes.append(node)
        return node

    def remove(self, node: onnx.NodeProto) -> None:
        self.nodes = [n for n in self.nodes if n is not node]

    def bypass(self, node: onnx.NodeProto) -> None:
        """Remove a one-input one-output node, its consumers reading its input instead."""
        source, target = node.input[0], node.output[0]
        self.remove(node)
        self.rename(target, source)

    def rename(self, old: str, new: str) -> None:
        """Every node input reading tensor ``old`` reads ``new`` instead."""
        if self.is_graph_output(old):
            raise ValueError(f"cannot reroute graph output {old!r}")
        for n in self.nodes:
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new

    def replace_input(self, node: onnx.NodeProto, old: str, new: str) -> None:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new

    # ---- finish ---------------------------------------------------------------------------
    def finish(self) -> onnx.ModelProto:
        """Write the nodes back in topological order, dropping unused initializers."""
        ordered = self._sorted()
        used = {name for n in ordered for name in n.input}
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        del self.graph.initializer[:]
        self.graph.initializer.extend(t for name, t in self.inits.items() if name in used)
        return self.model

    def _sorted(self) -> list[onnx.NodeProto]:
        ready = {i.name for i in self.graph.input} | set(self.inits) | {""}
        pending, ordered = list(self.nodes), []
        while pending:
            progress = [n for n in pending if all(i in ready for i in n.input)]
            if not progress:
                missing = sorted({i for n in pending for i in n.input if i not in ready})
                raise ValueError(f"graph has a cycle or dangling inputs: {missing[:5]}")
            for n in progress:
                ordered.append(n)
                ready.update(n.output)
            keep = {id(n) for n in progress}
            pending = [n for n in pending if id(n) not in keep]
        return ordered
