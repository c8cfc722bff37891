"""Shape inference for fold and fuse, without touching the caller's model and without
copying weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt import ir
from onnxopt.pass_base import PassContext

from .common import constant_nbytes


def establish_shapes_preserving(graph: gs.Graph, ctx: PassContext) -> list[tuple[gs.Variable, Any, Any]]:
    """``analysis.establish_shapes``, exporting through ``ir`` (as the framework's version should):
    gs's own export renames the TensorProtos behind lazily loaded constants, which mutates the
    caller's model, and fails on optional/sequence-typed graph inputs. Returns what it filled
    in as (tensor, old dtype, old shape), so a pass that changes nothing can put it back."""
    filled: list[tuple[gs.Variable, Any, Any]] = []
    try:
        with _WeightsAsStubs(graph):
            model = ctx.to_model(graph) if ctx.header is not None else gs.export_onnx(graph, do_type_check=False)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; folding copes with unknowns
        return filled
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for name, tensor in graph.tensors().items():
        vi = known.get(name)
        if vi is None or not isinstance(tensor, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        old = (tensor, tensor.dtype, tensor.shape)
        if tt.elem_type and tensor.dtype is None and tt.elem_type != onnx.TensorProto.STRING:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tt.HasField("shape") and tensor.shape is None:
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        if (tensor.dtype, tensor.shape) != old[1:]:
            filled.append(old)
    return filled


class _WeightsAsStubs:
    """Shape inference needs the dims of large constants, never their bytes: export them as
    data-less TensorProtos (the model is only read by inference), which makes the export and
    inference of a 90 MB model cost what a 100 kB one does."""

    THRESHOLD = 4096

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.swapped: list[tuple[gs.Constant, Any]] = []

    def __enter__(self):
        seen: set[int] = set()
        for sub in ir.iter_graphs(self.graph):
            for t in sub.tensors().values():
                if not isinstance(t, gs.Constant) or id(t) in seen or constant_nbytes(t) <= self.THRESHOLD:
                    continue
                seen.add(id(t))
                stub = _stub_proto(t)
                if stub is not None:
                    self.swapped.append((t, t._values))
                    t._values = LazyValues(stub)
        return self

    def __exit__(self, *exc):
        for t, values in self.swapped:
            t._values = values
        return False


def _stub_proto(t: gs.Constant) -> onnx.TensorProto | None:
    values = t._values
    if isinstance(values, LazyValues):
        elem, dims = values.tensor.data_type, list(values.tensor.dims)
    else:
        try:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype)
        except Exception:  # noqa: BLE001
            return None
        dims = list(np.shape(values))
    return _empty_tensor(t.name, elem, dims)


def _empty_tensor(name: str, elem: int, dims: list[int]) -> onnx.TensorProto:
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = elem
    proto.dims.extend(dims)
    return proto


def forget_shapes(filled: list[tuple[gs.Variable, Any, Any]]) -> None:
    """Put back what ``establish_shapes_preserving`` filled in (tensors folded into constants
    meanwhile have their own shape). Inferred shapes are for our analyses only: exported as
    value_info they make ORT measurably slower on some models (MiniLM: 5-12%)."""
    for tensor, dtype, shape in filled:
        if isinstance(tensor, gs.Variable):
            tensor.dtype, tensor.shape = dtype, shape
