"""Shape vectors known element by element (static ints or symbolic dims), so shape
arithmetic folds where it is static and Reshape targets lose their symbolic parts safely."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxopt.pass_base import PassContext

from .common import is_empty, unique_name
from .dims import Dims
from .constants import constant_node_allows, materialize, needs_constant_node
from .evaluate import Value



_INT_TYPES = (np.int64, np.int32, np.bool_)
_CAST_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
               onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
_EXACT_LIMIT = {np.int32: 2**31, np.float32: 2**24, np.float64: 2**53, np.int64: 2**63}

ShapeEntry = Any  # int | Sym


@dataclass
class _ShapeValue:
    """The value of a small int tensor of rank <= 1, element by element."""

    entries: list[ShapeEntry]
    dtype: type
    scalar: bool = False

    @property
    def known(self) -> bool:
        return all(isinstance(e, int) for e in self.entries)


def _int_constant(t: gs.Tensor, limit: int = 64) -> np.ndarray | None:
    if not isinstance(t, gs.Constant) or t.dtype not in _INT_TYPES or len(t.shape) > 1:
        return None
    if int(np.prod(t.shape, dtype=np.int64)) > limit:
        return None
    return np.asarray(t.values)


def _attr_or_input(node: gs.Node, attr: str, index: int) -> np.ndarray | None:
    """Opset-dependent operands (axes, starts...) as attribute or constant input."""
    if attr in node.attrs:
        return np.asarray(node.attrs[attr], dtype=np.int64)
    if len(node.inputs) > index and not is_empty(node.inputs[index]):
        return _int_constant(node.inputs[index])
    return None


class ShapeValues:
    """Element-wise values of shape vectors in one graph, computed lazily and memoised."""

    def __init__(self, dims: Dims) -> None:
        self.dims = dims
        self._memo: dict[int, _ShapeValue | None] = {}

    def get(self, t: gs.Tensor) -> _ShapeValue | None:
        key = id(t)
        if key not in self._memo:
            self._memo[key] = None  # cycles cannot happen in a DAG, but keep lookups bounded
            self._memo[key] = self._compute(t)
        return self._memo[key]

    def _compute(self, t: gs.Tensor) -> _ShapeValue | None:
        const = _int_constant(t)
        if const is not None:
            if const.dtype == np.bool_:
                return _ShapeValue([bool(v) for v in const.reshape(-1)], np.bool_, const.ndim == 0)
            return _ShapeValue([int(v) for v in const.reshape(-1)], const.dtype.type, const.ndim == 0)
        if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if (node.domain or "") not in ("", "ai.onnx") or node.outputs[0] is not t:
            return None
        handler = getattr(self, "_op_" + node.op, None)
        return handler(node) if handler else None

    def _op_Shape(self, node):
        entries = self.dims.of(node.inputs[0])
        if entries is None:
            return None
        rank = len(entries)
        start = int(node.attrs.get("start", 0))
        end = node.attrs.get("end")
        start = max(0, min(rank, start + rank if start < 0 else start))
        end = rank if end is None else int(end)
        end = max(0, min(rank, end + rank if end < 0 else end))
        return _ShapeValue(entries[start:end], np.int64)

    def _op_Size(self, node):
        entries = self.dims.of(node.inputs[0])
        if entries is None or not all(isinstance(e, int) for e in entries):
            return None
        return _ShapeValue([int(np.prod(entries, dtype=np.int64))], np.int64, scalar=True)

    def _op_Gather(self, node):
        data = self.get(node.inputs[0])
        idx = _int_constant(node.inputs[1])
        if data is None or data.scalar or idx is None or int(node.attrs.get("axis", 0)) != 0:
            return None
        n = len(data.entries)
        picked = []
        for i in idx.reshape(-1):
            i = int(i)
            if not -n <= i < n:
                return None
            picked.append(data.entries[i + n if i < 0 else i])
        return _ShapeValue(picked, data.dtype, scalar=idx.ndim == 0)

    def _op_Unsqueeze(self, node):
        data = self.get(node.inputs[0])
        axes = _attr_or_input(node, "axes", 1)
        if data is None or not data.scalar or axes is None or [int(a) for a in axes.reshape(-1)] not in ([0], [-1]):
            return None
        return _ShapeValue(list(data.entries), data.dtype)

    def _op_Squeeze(self, node):
        data = self.get(node.inputs[0])
        axes = _attr_or_input(node, "axes", 1)
        if data is None or data.scalar or len(data.entries) != 1:
            return None
        if axes is not None and [int(a) for a in axes.reshape(-1)] not in ([0], [-1]):
            return None
        return _ShapeValue(list(data.entries), data.dtype, scalar=True)

    def _op_Concat(self, node):
        if int(node.attrs.get("axis", 0)) not in (0, -1):
            return None
        parts = [self.get(t) for t in node.inputs]
        if any(p is None or p.scalar for p in parts) or len({p.dtype for p in parts}) != 1:
            return None
        return _ShapeValue([e for p in parts for e in p.entries], parts[0].dtype)

    def _op_Slice(self, node):
        data = self.get(node.inputs[0])
        if data is None or data.scalar:
            return None
        starts, ends = _attr_or_input(node, "starts", 1), _attr_or_input(node, "ends", 2)
        axes, steps = _attr_or_input(node, "axes", 3), _attr_or_input(node, "steps", 4)
        if starts is None or ends is None or starts.size != 1:
            return None
        if axes is not None and int(axes.reshape(-1)[0]) not in (0, -1):
            return None
        if len(node.inputs) > 3 and not is_empty(node.inputs[3]) and axes is None:
            return None
        if len(node.inputs) > 4 and not is_empty(node.inputs[4]) and steps is None:
            return None
        step = int(steps.reshape(-1)[0]) if steps is not None else 1
        if step == 0:
            return None
        n = len(data.entries)
        s, e = _clamp_slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), step, n)
        return _ShapeValue(data.entries[s:e:step] if e is not None else data.entries[s::step], data.dtype)

    def _op_Cast(self, node):
        data = self.get(node.inputs[0])
        dtype = _CAST_TYPES.get(node.attrs.get("to"))
        if data is None or dtype is None:
            return None
        limit = _EXACT_LIMIT[dtype]
        if any(isinstance(e, int) and not -limit <= e < limit for e in data.entries):
            return None  # would round: the value is no longer the dimension
        return _ShapeValue(list(data.entries), dtype, data.scalar)

    def _op_Identity(self, node):
        return self.get(node.inputs[0])

    def _op_Reshape(self, node):
        """A shape vector reshaped to 1-D (``[-1]`` or its own length) or to a scalar."""
        data, target = self.get(node.inputs[0]), _int_constant(node.inputs[1])
        if data is None or target is None:
            return None
        n = len(data.entries)
        if target.ndim == 1 and target.size == 1 and int(target[0]) in (-1, n):
            return _ShapeValue(list(data.entries), data.dtype)
        if target.size == 0 and n == 1:
            return _ShapeValue(list(data.entries), data.dtype, scalar=True)
        return None

    def _op_Equal(self, node):
        """Element-wise; a dimension is never negative, so it differs from any negative int."""
        a, b = self.get(node.inputs[0]), self.get(node.inputs[1])
        pairs = _pairs(a, b)
        if pairs is None:
            return None
        out = []
        for x, y in pairs:
            if isinstance(x, int) and isinstance(y, int):
                out.append(x == y)
            elif (isinstance(x, int) and x < 0) or (isinstance(y, int) and y < 0):
                out.append(False)
            elif self.dims.same(x, y):
                out.append(True)
            else:
                return None
        return _ShapeValue(out, np.bool_, a.scalar and b.scalar)

    def _op_Where(self, node):
        cond, x, y = (self.get(t) for t in node.inputs)
        if cond is None or not cond.known or x is None or y is None or x.dtype != y.dtype:
            return None
        n = max(len(cond.entries), len(x.entries), len(y.entries))
        if any(len(v.entries) not in (1, n) for v in (cond, x, y)):
            return None
        pick = [x.entries[i % len(x.entries)] if cond.entries[i % len(cond.entries)] else y.entries[i % len(y.entries)]
                for i in range(n)]
        return _ShapeValue(pick, x.dtype, cond.scalar and x.scalar and y.scalar)


def _pairs(a: _ShapeValue | None, b: _ShapeValue | None):
    """Broadcast two rank <= 1 values element by element."""
    if a is None or b is None:
        return None
    n = max(len(a.entries), len(b.entries))
    if len(a.entries) not in (1, n) or len(b.entries) not in (1, n):
        return None
    return [(a.entries[i % len(a.entries)], b.entries[i % len(b.entries)]) for i in range(n)]


def _clamp_slice(start: int, end: int, step: int, n: int) -> tuple[int, int | None]:
    """ONNX Slice clamping for one axis, as Python slice bounds (end None = past the front)."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    if step > 0:
        return max(0, min(n, start)), max(0, min(n, end))
    start = max(-1, min(n - 1, start))
    end = max(-1, min(n - 1, end))
    return start, (end if end >= 0 else None)


def fold_static_shapes(graph: gs.Graph, ctx: PassContext, dims: Dims | None = None) -> int:
    """Replace every shape-vector tensor whose elements are all static with a constant."""
    values = (dims or Dims(graph)).values
    folded = 0
    for node in list(graph.nodes):
        if len(node.outputs) != 1 or node.op == "Constant":
            continue
        out = node.outputs[0]
        if not isinstance(out, gs.Variable):
            continue
        v = values.get(out)
        if v is None or not v.known:
            continue
        array = np.array(v.entries, dtype=v.dtype)
        if v.scalar:
            array = array.reshape(())
        proto = numpy_helper.from_array(array, out.name)
        if needs_constant_node(graph, out, ctx) and not constant_node_allows(proto.data_type, ctx):
            continue
        node.outputs.clear()
        materialize(graph, out, Value(proto, array.nbytes), ctx)
        folded += 1
    if folded:
        graph.nodes = [n for n in graph.nodes if n.outputs]
    return folded


def relax_reshape_shapes(graph: gs.Graph, dims: Dims | None = None) -> int:
    """Reshape(x, Concat(Shape(x)[0], Shape(x)[1], 12, 32)) -> Reshape(x, [0, 0, 12, 32]).

    A symbolic entry that equals the data's own dimension at the same position becomes 0
    (copy); a single remaining unknown entry becomes -1. Never freezes a symbolic size.
    """
    dims = dims or Dims(graph)
    values = dims.values
    relaxed = 0
    for node in graph.nodes:
        if node.op != "Reshape" or (node.domain or "") not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        shape_t = node.inputs[1]
        if isinstance(shape_t, gs.Constant):
            continue
        v = values.get(shape_t)
        data_dims = dims.of(node.inputs[0])
        if v is None or v.scalar or data_dims is None:
            continue
        allow_zero = int(node.attrs.get("allowzero", 0)) == 1
        new: list[int] = []
        unknown = 0
        for i, e in enumerate(v.entries):
            if isinstance(e, int):
                new.append(e)
            elif not allow_zero and i < len(data_dims) and dims.same(e, data_dims[i]):
                new.append(0)
            else:
                new.append(-1)
                unknown += 1
        if unknown > 1 or (unknown == 1 and sum(1 for e in v.entries if e == -1) > 0):
            continue
        if allow_zero and 0 in new and unknown:
            continue
        node.inputs[1] = gs.Constant(unique_name(graph, f"{shape_t.name}__static"), np.array(new, dtype=np.int64))
        relaxed += 1
    return relaxed


def drop_noop_expands(graph: gs.Graph, dims: Dims) -> int:
    """Expand(x, shape) whose result has x's own dims (known symbolically) is x."""
    dropped = 0
    protected = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if node.op != "Expand" or (node.domain or "") not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, out = node.inputs[0], node.outputs[0]
        if id(out) in protected or not out.outputs:
            continue
        before, after = dims.of(x), dims.of(out)
        if before is None or after is None or len(before) != len(after):
            continue
        if all(dims.same(a, b) for a, b in zip(before, after)):
            for reader in list(out.outputs):
                for i, t in enumerate(reader.inputs):
                    if t is out:
                        reader.inputs[i] = x
            dropped += 1
    return dropped
