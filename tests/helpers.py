"""Shared test helpers: ONNX text models, ORT runs, numeric comparison."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import parser

from onnxopt import validate


def model(text: str) -> onnx.ModelProto:
    m = parser.parse_model(text)
    onnx.checker.check_model(m)
    return m


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return validate.run(validate.session(m), feeds)


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    ra, rb = run(a, feeds), run(b, feeds)
    assert list(ra) == list(rb), f"outputs differ: {list(ra)} vs {list(rb)}"
    for name in ra:
        d = validate.diff(name, ra[name], rb[name])
        assert d.shape_ok and d.max_rel <= tol, f"{name}: {d}"


def ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
