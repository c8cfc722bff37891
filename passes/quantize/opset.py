"""Which Q/DQ operators the output can use, and the opset upgrade that makes standard ones possible.

Per-channel weights need the ``axis`` attribute of QuantizeLinear/DequantizeLinear, which the
default domain has only from opset 13. Paddle exports are opset 11/12. Two ways out:

* raise the model to opset 13, adapting the few operators whose signature changed between 11
  and 13 (attributes that became inputs, Softmax's axis semantics); the result is a standard
  QDQ model any runtime reads. This needs the framework to let a pass raise the opset
  (``ctx.raise_opset``); without it, or when an operator has no adapter,
* use ONNX Runtime's ``com.microsoft`` QuantizeLinear/DequantizeLinear, which take ``axis`` at any
  opset and which ORT fuses exactly like the standard ones (ORT-only model, stated in stats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import UsageError

from .graphutil import Namer

PER_AXIS_OPSET = 13
MIN_OPSET = 10           # QLinearConv/QLinearMatMul: what ORT fuses Q/DQ into
MS_DOMAIN = "com.microsoft"

# Operators whose meaning or signature changed between opset 11 and 13 (beyond new types).
_ATTR_TO_INPUT = {"Squeeze": "axes", "Unsqueeze": "axes", "ReduceSum": "axes", "Split": "split"}
_SOFTMAX_LIKE = {"Softmax", "LogSoftmax", "Hardmax"}
_NO_ADAPTER = {"Upsample", "Scatter"}


@dataclass(frozen=True)
class QdqFlavor:
    domain: str          # "" (standard) or "com.microsoft"
    opset: int           # default-domain opset of the output model
    upgraded_from: int = 0

    @property
    def label(self) -> str:
        return "standard" if not self.domain else "com.microsoft (ORT only)"


def choose_flavor(graph: gs.Graph, ctx) -> QdqFlavor:
    """Standard Q/DQ when the opset allows or can be raised, else ORT's contrib Q/DQ."""
    opset = ctx.opset
    if opset >= PER_AXIS_OPSET:
        return QdqFlavor("", opset)
    if opset < MIN_OPSET:
        raise UsageError(f"quantize: the model is opset {opset}; int8 needs opset >= {MIN_OPSET} "
                         "(ONNX Runtime's QLinear kernels): convert it first, e.g. "
                         "onnx.version_converter.convert_version(model, 13)")
    raise_opset = getattr(ctx, "raise_opset", None)
    if raise_opset is not None and opset >= 11 and upgradable(graph):
        upgrade(graph, opset)
        raise_opset("", PER_AXIS_OPSET)
        return QdqFlavor("", PER_AXIS_OPSET, upgraded_from=opset)
    return QdqFlavor(MS_DOMAIN, opset)


def _default_domain(node: gs.Node) -> bool:
    return (node.domain or "") in ("", "ai.onnx")


def _all_nodes(graph: gs.Graph):
    for node in graph.nodes:
        yield node
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                yield from _all_nodes(attr)


def upgradable(graph: gs.Graph) -> bool:
    for node in _all_nodes(graph):
        if not _default_domain(node):
            continue
        if node.op in _NO_ADAPTER:
            return False
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].name:
            return False
        if node.op == "Resize" and node.attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
            return False
    return True


def upgrade(graph: gs.Graph, opset: int) -> None:
    """Rewrite opset-11/12 operators into their opset-13 spelling (same function)."""
    namer = Namer(graph)
    for sub in _graphs(graph):
        for node in list(sub.nodes):
            if not _default_domain(node):
                continue
            if node.op in _ATTR_TO_INPUT:
                key = _ATTR_TO_INPUT[node.op]
                value = node.attrs.pop(key, None)
                if value is not None:
                    while len(node.inputs) < 1:
                        node.inputs.append(gs.Variable(""))
                    node.inputs.append(gs.Constant(namer(f"{node.name}_{key}"), np.asarray(value, np.int64)))
            elif node.op in _SOFTMAX_LIKE:
                _adapt_softmax(sub, node, namer)
            elif node.op == "Dropout":
                node.attrs.pop("ratio", None)
                node.op = "Identity"
                node.attrs.clear()
                del node.outputs[1:]
        sub.toposort()
    graph.opset = PER_AXIS_OPSET


def _graphs(graph: gs.Graph):
    yield graph
    for node in graph.nodes:
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                yield from _graphs(attr)


def _adapt_softmax(graph: gs.Graph, node: gs.Node, namer: Namer) -> None:
    """Softmax<=12 normalises over the flattened trailing axes from ``axis`` (default 1);
    Softmax-13 over the single ``axis`` (default -1). Same when ``axis`` is the last axis."""
    axis = int(node.attrs.get("axis", 1))
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if axis == -1 or (rank is not None and axis == rank - 1):
        node.attrs["axis"] = -1
        return
    y = node.outputs[0]
    flat = gs.Variable(namer(f"{x.name}_flat"), dtype=x.dtype)
    shape = gs.Variable(namer(f"{x.name}_shape"), dtype=np.int64)
    normed = gs.Variable(namer(f"{y.name}_flat"), dtype=y.dtype)
    graph.nodes.append(gs.Node("Shape", namer(f"{node.name}_shape"), inputs=[x], outputs=[shape]))
    graph.nodes.append(gs.Node("Flatten", namer(f"{node.name}_flatten"), {"axis": axis}, inputs=[x], outputs=[flat]))
    node.inputs[0] = flat
    node.outputs[0] = normed
    node.attrs["axis"] = -1
    graph.nodes.append(gs.Node("Reshape", namer(f"{node.name}_unflatten"), inputs=[normed, shape], outputs=[y]))


def opset_id(domain: str, version: int) -> onnx.OperatorSetIdProto:
    return onnx.helper.make_opsetid(domain, version)


def ensure_domain_import(graph: gs.Graph, domain: str, version: int = 1) -> None:
    """gs exports ``import_domains``; a node in a new domain needs its opset import there."""
    domains = list(graph.import_domains or [])
    if not any(d.domain == domain for d in domains):
        if not domains:
            domains.append(opset_id("", graph.opset))
        domains.append(opset_id(domain, version))
        graph.import_domains = domains
