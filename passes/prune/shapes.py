"""Shapes for the channel analysis, inferred on an exported copy and kept on the side.

The analysis needs ranks and channel sizes, but a pass that reports ``changed=False`` must leave
the graph bit-identical, so inferred shapes are not written into the graph's tensors here.
(The framework's ``shapes`` requirement would do that before the change guard looks, but its
export renames lazily loaded TensorProtos of the caller's ModelProto, see the report.)
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.pass_base import PassContext


def header(ctx: PassContext) -> onnx.ModelProto:
    """The framework's model header when the context carries one, else a minimal one."""
    existing = getattr(ctx, "header", None)
    if existing is not None:
        return existing
    model = onnx.ModelProto()
    model.ir_version = ctx.ir_version or onnx.IR_VERSION
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in ctx.opsets.items())
    return model


def export(graph: gs.Graph, ctx: PassContext) -> onnx.ModelProto:
    """A self-contained ModelProto of ``graph`` (never touches the graph or the caller's proto)."""
    return ir.to_proto(graph, header(ctx))


def _without_large_payloads(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the bytes of big floating-point initializers (inference reads their dims only;
    shape-carrying tensors are small integers and stay), so serialising for the C++ inference
    does not copy every weight."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for init in g.initializer:
            if init.data_type in floats and init.ByteSize() > 4096:
                init.ClearField("raw_data")
                init.ClearField("float_data")
                init.ClearField("double_data")
                init.ClearField("int32_data")
        for node in g.node:
            for attr in node.attribute:
                stack.extend(list(attr.graphs) + ([attr.g] if attr.HasField("g") else []))
                if attr.HasField("t") and attr.t.data_type in floats and attr.t.ByteSize() > 4096:
                    attr.t.ClearField("raw_data")
                    attr.t.ClearField("float_data")
    return model


def infer(graph: gs.Graph, ctx: PassContext) -> dict[str, list[int | None]]:
    """Tensor name -> dims (None for symbolic/unknown), from ONNX shape inference; {} on failure."""
    try:
        model = onnx.shape_inference.infer_shapes(_without_large_payloads(export(graph, ctx)), data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: unknown shapes only make the analysis block more
        return {}
    shapes: dict[str, list[int | None]] = {}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is not None and tt.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                                  for d in tt.shape.dim]
        for node in g.node:
            for attr in node.attribute:
                stack.extend(list(attr.graphs) + ([attr.g] if attr.HasField("g") else []))
    return shapes
