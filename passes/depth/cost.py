"""What a block costs: weights (parameters) and multiply-accumulates at concrete input shapes.

MACs count Conv, ConvTranspose, MatMul and Gemm (what dominates the run time); element-wise
work is left out. Shapes come from ONNX shape inference with data propagation on a copy of the
model whose inputs are pinned to concrete shapes. Where that leaves a dim unknown (typical of
exports that compute shapes at run time: BERT's position ids broadcast against the batch), one
ORT run at those shapes reports the real ones (``runtime_shapes``).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .blocks import Block

MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def block_params(graph_nodes: list[gs.Node], block: Block) -> int:
    """Elements of the weights the block's nodes read, initializers or Constant nodes (Paddle
    exports keep weights in Constant nodes); each weight counted once."""
    seen: dict[str, int] = {}
    for i in block.nodes:
        for t in graph_nodes[i].inputs:
            value = _weight(t)
            if value is not None and t.name not in seen:
                seen[t.name] = int(np.prod(value.shape)) if value.shape is not None else 0
    return sum(seen.values())


def _weight(t: gs.Tensor) -> gs.Constant | None:
    if isinstance(t, gs.Constant):
        return t
    producer = t.inputs[0] if len(t.inputs) == 1 else None
    if producer is not None and producer.op == "Constant" and isinstance(producer.attrs.get("value"), gs.Constant):
        return producer.attrs["value"]
    return None


def inferred_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    """Tensor name -> shape (ints where known) with the graph inputs pinned to ``input_shapes``."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    del pinned.graph.value_info[:]
    for vi in pinned.graph.input:
        shape = input_shapes.get(vi.name)
        if shape is None or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)
    for vi in pinned.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: unknown shapes give unknown MACs
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def runtime_shapes(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Shapes of ``names`` from one ORT run (optimizations off, so every tensor still exists)."""
    from onnxopt import validate

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.add().name = name
            have.add(name)
    try:
        sess = validate.session(probe)
        outs = sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    except Exception:  # noqa: BLE001 - best effort: MACs stay unknown
        return {}
    return {n: tuple(int(d) for d in o.shape) for n, o in zip(names, outs)}


def mac_tensors(graph_nodes: list[gs.Node], blocks: list[Block]) -> list[str]:
    """The tensors whose shapes MAC counting needs."""
    names = []
    for b in blocks:
        for i in b.nodes:
            node = graph_nodes[i]
            if node.op in MAC_OPS:
                names.extend(t.name for t in (node.inputs[:1] + node.outputs[:1]) if isinstance(t, gs.Variable))
    return list(dict.fromkeys(names))


def node_macs(node: gs.Node, shapes: dict[str, tuple]) -> int | None:
    """MACs of one node, 0 for ops not counted, None when a needed shape is unknown."""
    if node.op not in MAC_OPS:
        return 0

    def shape(t: gs.Tensor):
        if isinstance(t, gs.Constant):
            return tuple(t.shape)
        s = shapes.get(t.name)
        return s if s is not None and all(isinstance(d, int) for d in s) else None

    out = shape(node.outputs[0]) if node.outputs else None
    if node.op == "Conv":
        w = shape(node.inputs[1])
        return None if out is None or w is None else math.prod(out) * math.prod(w[1:])
    if node.op == "ConvTranspose":
        x, w = shape(node.inputs[0]), shape(node.inputs[1])
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    if node.op == "MatMul":
        a = shape(node.inputs[0])
        if out is None or a is None or not a:
            return None
        return math.prod(out) * a[-1]
    if node.op == "Gemm":
        a = shape(node.inputs[0])
        if out is None or a is None or len(a) != 2:
            return None
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return math.prod(out) * k
    return 0


def block_macs(graph_nodes: list[gs.Node], block: Block, shapes: dict[str, tuple]) -> int | None:
    total = 0
    for i in block.nodes:
        m = node_macs(graph_nodes[i], shapes)
        if m is None:
            return None
        total += m
    return total
