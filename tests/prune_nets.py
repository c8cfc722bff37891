"""Small models for the prune tests: ONNX text for the structure, numpy for the weights.

``net(text, **weights)`` parses a graph whose weights are declared as graph inputs and turns
those inputs into initializers with the given arrays, so each test states its structure in
readable ONNX text and its zero/constant channels in numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import onnxopt

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def net(text: str, head: str = HEAD, **weights: np.ndarray) -> onnx.ModelProto:
    m = onnx.parser.parse_model(head + text)
    keep = [i for i in m.graph.input if i.name not in weights]
    missing = set(weights) - {i.name for i in m.graph.input}
    assert not missing, f"weights without a declared input: {missing}"
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name, value in weights.items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    onnx.checker.check_model(m)
    return m


def w(*shape, seed=0, zero=(), scale=1.0) -> np.ndarray:
    """Random float32 weights with the listed rows (first axis) set to zero."""
    a = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    for row in zero:
        a[row] = 0
    return a


def vec(n, seed=0, zero=(), values=None) -> np.ndarray:
    a = np.random.default_rng(seed + 1000).standard_normal(n).astype(np.float32)
    for k in zero:
        a[k] = 0
    for k, v in (values or {}).items():
        a[k] = v
    return a


def bn(c, seed=0, zero=()) -> dict[str, np.ndarray]:
    """BatchNormalization parameters (scale, shift, mean, var); ``zero`` channels get scale=shift=0."""
    rng = np.random.default_rng(seed + 2000)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    shift = rng.standard_normal(c).astype(np.float32)
    for k in zero:
        scale[k] = shift[k] = 0
    return {"scale": scale, "shift": shift, "mean": rng.standard_normal(c).astype(np.float32) * 0.1,
            "var": rng.uniform(0.5, 2.0, c).astype(np.float32)}


def prune(m: onnx.ModelProto, pipeline: str = "prune", **kw):
    """(pruned model, the prune record's stats), with the change guard and verify-each on."""
    result = onnxopt.run_pipeline(m, pipeline, change_guard=True, verify_each=True, **kw)
    record = [r for r in result.report.records if r.name == "prune"][-1]
    return result.model, record


def node_by_output(m: onnx.ModelProto, out: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if out in n.output)


def init(m: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == name)


def weight(m: onnx.ModelProto, out: str, slot: int = 1) -> np.ndarray:
    """The initializer in input ``slot`` of the node producing ``out``."""
    return init(m, node_by_output(m, out).input[slot])


def attr(m: onnx.ModelProto, out: str, name: str):
    node = node_by_output(m, out)
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)
