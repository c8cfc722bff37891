"""Analyses a pass can require; the manager establishes them once and drops them on change."""

from __future__ import annotations

from typing import Callable

import networkx as nx
import onnx
import onnx_graphsurgeon as gs

from .pass_base import PassContext


def establish_toposorted(graph: gs.Graph, ctx: PassContext) -> None:
    graph.toposort(recurse_subgraphs=True)


def establish_shapes(graph: gs.Graph, ctx: PassContext) -> None:
    """Fill dtype/shape on every tensor from onnx shape inference (symbolic dims stay symbolic)."""
    from . import ir

    model = ir.skeleton(graph, ctx.header if ctx.header is not None else onnx.ModelProto())
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; passes must cope with unknowns
        return
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    added = ctx.analyses.setdefault(ADDED_SHAPES, {})
    for name, tensor in graph.tensors().items():
        vi = known.get(name)
        if vi is None or not isinstance(tensor, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        before = (tensor.dtype, tensor.shape)
        if tt.elem_type and tensor.dtype is None:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type in _NP else None
        if tt.HasField("shape") and tensor.shape is None:
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        if (tensor.dtype, tensor.shape) != before and id(tensor) not in added:
            added[id(tensor)] = (tensor, before)


ADDED_SHAPES = "shapes.added"


def drop_added_shapes(graph: gs.Graph, ctx: PassContext) -> None:
    """Forget the annotations ``establish_shapes`` added: exported as value_info they can go stale
    and they slow ORT's session start-up (measured 5-12% on MiniLM); ORT infers shapes itself."""
    io = {id(t) for t in graph.inputs + graph.outputs}
    for key, (tensor, (dtype, shape)) in ctx.analyses.pop(ADDED_SHAPES, {}).items():
        if key not in io and isinstance(tensor, gs.Variable):  # a pass may have made it a Constant
            tensor.dtype, tensor.shape = dtype, shape


_NP = {t for t in onnx.helper.get_all_tensor_dtypes()
       if t not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)} if hasattr(onnx.helper, "get_all_tensor_dtypes") else set(range(1, 17)) - {8}

ESTABLISH: dict[str, Callable[[gs.Graph, PassContext], None]] = {
    "toposorted": establish_toposorted,
    "shapes": establish_shapes,
}


def use_def_graph(graph: gs.Graph) -> nx.DiGraph:
    """Node-level dataflow graph (networkx): an edge producer -> consumer per tensor."""
    g = nx.DiGraph()
    producer = {}
    for node in graph.nodes:
        g.add_node(id(node), node=node)
        for out in node.outputs:
            producer[id(out)] = node
    for node in graph.nodes:
        for t in node.inputs:
            src = producer.get(id(t))
            if src is not None:
                g.add_edge(id(src), id(node), tensor=t.name)
    return g
