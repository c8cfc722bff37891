"""What a model costs: weight parameters and multiply-accumulates of its channel-mixing layers.

MACs come from recorded shapes; a symbolic dimension (dynamic batch or image size) counts as 1,
so figures for dynamic models are per unit of that dimension (ratios stay meaningful).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import ir

from .channels import const_size, is_empty, static_shape


def node_params(node: gs.Node) -> int:
    """Elements of the constant inputs (initializers or Constant-node outputs) a node reads."""
    return sum(const_size(t) or 0 for t in node.inputs)


def graph_params(graph: gs.Graph) -> int:
    """Floating-point weight elements across the graph and its subgraphs (each constant once)."""
    seen: set[int] = set()
    total = 0
    for sub in ir.iter_graphs(graph):
        for node in sub.nodes:
            for t in node.inputs:
                if is_empty(t):
                    continue
                key = id(t.inputs[0]) if isinstance(t, gs.Variable) and t.inputs else id(t)
                if key in seen:
                    continue
                size = const_size(t)
                if size is not None:
                    seen.add(key)
                    total += size
    return total


def _dims(t: gs.Tensor, shapes: dict | None) -> list[int] | None:
    shape = static_shape(t, shapes)
    return None if shape is None else [1 if d is None else int(d) for d in shape]


def node_macs(node: gs.Node, shapes: dict | None = None) -> int:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul (0 for other ops or unknown shapes)."""
    if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not node.outputs:
        return 0
    out = _dims(node.outputs[0], shapes)
    w = static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is not None and any(d is None for d in w):
        w = None
    if node.op == "Conv" and w is not None and out is not None:
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op == "ConvTranspose" and w is not None:
        x = _dims(node.inputs[0], shapes)
        if x is None:
            return 0
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    a = _dims(node.inputs[0], shapes)
    if out is None or a is None or not a:
        return 0
    k = a[0] if node.op == "Gemm" and int(node.attrs.get("transA", 0)) else a[-1]
    return int(np.prod(out, dtype=np.int64)) * k


def graph_macs(graph: gs.Graph, shapes: dict | None = None) -> int:
    """Total MACs; ``shapes`` (name -> dims, e.g. from ``shapes.infer``) fills unrecorded shapes."""
    return sum(node_macs(n, shapes) for sub in ir.iter_graphs(graph) for n in sub.nodes)
