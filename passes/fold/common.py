"""Helpers every part of fold uses."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues


def is_empty(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and t.name == ""


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor name not yet used in ``graph`` (gs exports by name: duplicates would merge)."""
    names = graph.tensors()
    candidate, k = base, 0
    while candidate in names:
        k += 1
        candidate = f"{base}__{k}"
    return candidate


def constant_nbytes(c: gs.Constant) -> int:
    values = c._values
    if isinstance(values, LazyValues):
        return int(values.nbytes)
    return int(np.asarray(values).nbytes)
