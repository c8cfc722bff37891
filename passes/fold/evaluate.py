"""Evaluate constant nodes in ONNX Runtime (onnx's reference evaluator as the fallback),
results as TensorProtos taken from raw bytes so every dtype stays exact."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import outer_inputs, subgraphs_of

from .common import is_empty


@dataclass
class Value:
    """One evaluated output: an ONNX TensorProto (exact for every dtype) or a non-tensor."""

    proto: onnx.TensorProto | None
    nbytes: int


def named(proto: onnx.TensorProto, name: str) -> onnx.TensorProto:
    proto.name = name
    return proto



class Evaluator:
    """Evaluates a topologically ordered list of constant nodes; results keyed by tensor name."""

    def __init__(self, ctx: PassContext, root: gs.Graph):
        self.ctx = ctx
        self.runs = 0  # sessions built: one per batch, more only when a batch must be split
        self.type_attrs = getattr(root, "onnxopt_type_attrs", {}) or {}
        self.opsets = dict(ctx.opsets) or {"": 1}

    def evaluate(self, nodes: list[gs.Node]) -> dict[str, Value]:
        results: dict[str, Value] = {}
        self._evaluate(nodes, results)
        return results

    def _evaluate(self, nodes: list[gs.Node], results: dict[str, Value]) -> None:
        nodes = self._ready(nodes, results)
        if not nodes:
            return
        try:
            results.update(self._run_ort(nodes, results))
            return
        except Exception:  # noqa: BLE001 - any failure: narrow down to the failing nodes
            pass
        if len(nodes) > 1:
            half = len(nodes) // 2
            self._evaluate(nodes[:half], results)
            self._evaluate(nodes[half:], results)
            return
        try:
            results.update(self._run_reference(nodes[0], results))
        except Exception:  # noqa: BLE001 - neither evaluator can: the node stays
            pass

    @staticmethod
    def _ready(nodes: list[gs.Node], results: dict[str, Value]) -> list[gs.Node]:
        """The nodes whose inputs are constants, known results or outputs of earlier ready nodes."""
        available = {name for name, v in results.items() if v.proto is not None}
        ready = []
        for node in nodes:
            reads = list(node.inputs) + [t for s in subgraphs_of(node) for t in outer_inputs(s)]
            if all(is_empty(t) or isinstance(t, gs.Constant) or t.name in available for t in reads):
                ready.append(node)
                available.update(o.name for o in node.outputs if not is_empty(o))
        return ready

    def _model(self, nodes: list[gs.Node], results: dict[str, Value]) -> tuple[onnx.ModelProto, list[str]]:
        produced = {o.name for n in nodes for o in n.outputs if not is_empty(o)}
        initializers: dict[str, onnx.TensorProto] = {}

        def need(t: gs.Tensor) -> None:
            if is_empty(t) or t.name in produced or t.name in initializers:
                return
            if isinstance(t, gs.Constant):
                initializers[t.name] = _constant_proto(t)
            else:
                initializers[t.name] = named(_copy(results[t.name].proto), t.name)

        for n in nodes:
            for t in n.inputs:
                need(t)
            for sub in subgraphs_of(n):
                for t in outer_inputs(sub):
                    need(t)
        with _PreservedNames(nodes):
            protos = [OnnxExporter.export_node(n) for n in nodes]
        for proto in protos:
            extra = self.type_attrs.get(proto.output[0]) if proto.output else None
            if extra:
                have = {a.name for a in proto.attribute}
                proto.attribute.extend(a for a in extra if a.name not in have)
        outputs = sorted(produced)
        graph = onnx.helper.make_graph(protos, "fold", [], [onnx.ValueInfoProto(name=o) for o in outputs],
                                       list(initializers.values()))
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in self.opsets.items()])
        model.ir_version = max(self.ctx.ir_version or onnx.IR_VERSION, 4)
        return model, outputs

    def _run_ort(self, nodes, results) -> dict[str, Value]:
        import onnxruntime as ort

        self.runs += 1
        model, outputs = self._model(nodes, results)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        values = sess.run_with_ort_values(outputs, {})
        return {name: _from_ort(ov, name) for name, ov in zip(outputs, values)}

    def _run_reference(self, node: gs.Node, results) -> dict[str, Value]:
        from onnx.reference import ReferenceEvaluator

        self.runs += 1
        model, outputs = self._model([node], results)
        got = ReferenceEvaluator(model).run(outputs, {})
        out = {}
        for name, value in zip(outputs, got):
            if isinstance(value, np.ndarray):
                proto = numpy_helper.from_array(value, name)
                out[name] = Value(proto, value.nbytes)
            else:
                out[name] = Value(None, 0)
        return out


def _from_ort(ov, name: str) -> Value:
    if not ov.is_tensor():
        return Value(None, 0)
    elem = ov.element_type()
    if elem == onnx.TensorProto.STRING:
        array = ov.numpy()
        return Value(numpy_helper.from_array(array.astype(object), name), int(array.size) * 8)
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = elem
    proto.dims.extend(ov.shape())
    n = ov.tensor_size_in_bytes()
    proto.raw_data = ctypes.string_at(ov.data_ptr(), n) if n else b""
    return Value(proto, n)


def _copy(proto: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(proto)
    return out


def _constant_proto(c: gs.Constant) -> onnx.TensorProto:
    values = c._values
    if isinstance(values, LazyValues):
        return named(_copy(values.tensor), c.name)
    array = np.asarray(values)
    export = getattr(c, "export_dtype", None)
    if export is not None and export != array.dtype:
        return named(OnnxExporter.export_tensor_proto(c), c.name)
    return numpy_helper.from_array(array, c.name)


class _PreservedNames:
    """gs renames the TensorProto behind a lazily loaded constant when it exports it; our
    evaluation exports must leave the caller's model untouched, so names are put back."""

    def __init__(self, nodes: Iterable[gs.Node]):
        self.protos: list[tuple[onnx.TensorProto, str | None]] = []
        for proto in _lazy_protos_of(nodes):
            self.protos.append((proto, proto.name if proto.HasField("name") else None))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proto, name in self.protos:
            if name is None:
                proto.ClearField("name")
            else:
                proto.name = name
        return False


def _lazy_protos_of(nodes: Iterable[gs.Node]):
    for node in nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Constant) and isinstance(value._values, LazyValues):
                yield value._values.tensor
            elif isinstance(value, gs.Graph):
                for t in value.tensors().values():
                    if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues):
                        yield t._values.tensor
                yield from _lazy_protos_of(value.nodes)
