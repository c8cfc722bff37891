"""Small graph helpers the quantizer's modules share: constants, producers, names, copies."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.rewrite import FreshNames

FLOAT_TYPES = (np.float32,)


def const_array(tensor: gs.Tensor) -> np.ndarray | None:
    """Value of an initializer or of a Constant node's output; None for anything computed."""
    if isinstance(tensor, gs.Constant):
        try:
            return np.asarray(tensor.values)
        except Exception:  # noqa: BLE001 - exotic dtypes numpy cannot hold
            return None
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def is_float_var(tensor: gs.Tensor) -> bool:
    """A computed tensor that is (or may be: unknown dtype) float32."""
    if not isinstance(tensor, gs.Variable) or tensor.name == "":
        return False
    return tensor.dtype is None or np.dtype(tensor.dtype) == np.float32


def name_nodes(graph: gs.Graph) -> int:
    """Give every node a unique name, so plans can refer to nodes across graph copies."""
    seen: set[str] = set()
    renamed = 0
    for k, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op}_{k}"
            name, i = base, 0
            while name in seen:
                i += 1
                name = f"{base}_{i}"
            node.name = name
            renamed += 1
        seen.add(node.name)
    return renamed


class Namer(FreshNames):
    """Fresh tensor/node names that collide with nothing in the graph."""

    def __init__(self, graph: gs.Graph):
        super().__init__(set(graph.tensors()) | {n.name for n in graph.nodes})


def node_map(graph: gs.Graph) -> dict[str, gs.Node]:
    return {n.name: n for n in graph.nodes}


_IR_ATTRS = ("onnxopt_types", "onnxopt_type_attrs")


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """gs's copy (weights shared, not duplicated) plus the type records onnxopt.ir keeps."""
    copy = graph.copy()
    for attr in _IR_ATTRS:
        if attr in graph.__dict__:
            setattr(copy, attr, graph.__dict__[attr])
    return copy
