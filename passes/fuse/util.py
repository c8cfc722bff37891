"""Small matching helpers shared by the fuse rules: who produces a tensor, who reads it, what a
constant holds, and which tensors must keep their identity (graph outputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import subgraphs_of

NUMERIC_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # TensorProto types numpy holds exactly
PROTECTED_KEY = "fuse.protected"  # ctx.scratch: ids of tensors that are outputs of some graph
STANDARD = ("", "ai.onnx")


def protect_outputs(graph: gs.Graph, ctx: PassContext) -> None:
    """Record every (sub)graph output: rules must keep those tensors (and their names)."""
    ids: set[int] = set()

    def walk(g: gs.Graph) -> None:
        ids.update(id(t) for t in g.outputs)
        for node in g.nodes:
            for sub in subgraphs_of(node):
                walk(sub)

    walk(graph)
    ctx.scratch[PROTECTED_KEY] = ids


def is_protected(t: gs.Tensor, ctx: PassContext) -> bool:
    return id(t) in ctx.scratch.get(PROTECTED_KEY, ())


def is_std(node: gs.Node | None, *ops: str) -> bool:
    return node is not None and (node.domain or "") in STANDARD and (not ops or node.op in ops)


def producer(t: gs.Tensor) -> gs.Node | None:
    if isinstance(t, gs.Variable) and len(t.inputs) == 1:
        return t.inputs[0]
    return None


def consumers(t: gs.Tensor) -> list[gs.Node]:
    seen: dict[int, gs.Node] = {}
    for node in t.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def only_consumer(t: gs.Tensor, ctx: PassContext) -> gs.Node | None:
    """The single node reading ``t`` (once or more), if ``t`` is not also a graph output."""
    readers = consumers(t)
    if len(readers) != 1 or is_protected(t, ctx):
        return None
    return readers[0]


def feeds_only(t: gs.Tensor, node: gs.Node, ctx: PassContext) -> bool:
    """``t`` is read by ``node`` and nothing else, and is no graph output: safe to fuse away."""
    return only_consumer(t, ctx) is node


def _constant_of(t: gs.Tensor | None) -> gs.Constant | None:
    """The gs.Constant behind an initializer or a Constant node's output, else None."""
    if isinstance(t, gs.Variable):
        node = producer(t)
        value_attr = node.attrs.get("value") if is_std(node, "Constant") else None
        return value_attr if isinstance(value_attr, gs.Constant) else None
    return t if isinstance(t, gs.Constant) else None


def const(t: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor or Constant node output (plain numpy dtypes), else None."""
    t = _constant_of(t)
    if t is None:
        return None
    lazy = getattr(t._values, "tensor", None)
    if lazy is not None:
        if getattr(lazy, "data_type", None) not in NUMERIC_TYPES:
            return None  # strings, bfloat16, float8...: numpy cannot hold them exactly
        # read the proto directly, without gs caching a copy in the Constant: unchanged
        # weights then export straight from their TensorProto
        try:
            value = numpy_helper.to_array(lazy)
        except Exception:  # noqa: BLE001
            return None
    else:
        try:
            value = np.asarray(t.values)
        except Exception:  # noqa: BLE001 - exotic dtypes numpy can't hold
            return None
    if value.dtype.kind not in "fiub":
        return None
    return value


def const_meta(t: gs.Tensor | None) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of what ``const`` would return, without reading the values (matching
    only needs these; reading a big weight costs a copy)."""
    t = _constant_of(t)
    if t is None:
        return None
    lazy = getattr(t._values, "tensor", None)
    if lazy is not None:
        if getattr(lazy, "data_type", None) not in NUMERIC_TYPES:
            return None
        return tuple(int(d) for d in lazy.dims), np.dtype(helper.tensor_dtype_to_np_dtype(lazy.data_type))
    values = t._values
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "fiub":
        return None
    return values.shape, values.dtype


def scalar(t: gs.Tensor | None) -> float | None:
    """The value of a constant holding one number (any rank), else None."""
    value = const(t)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def is_scalar(t: gs.Tensor | None, expected: float, rtol: float = 1e-6) -> bool:
    v = scalar(t)
    return v is not None and abs(v - expected) <= rtol * max(1.0, abs(expected))


def rank(t: gs.Tensor) -> int | None:
    shape = t.shape
    return None if shape is None else len(shape)


def static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    shape = t.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def empty(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and t.name == ""


def used_outputs(node: gs.Node, ctx: PassContext) -> list[gs.Tensor]:
    return [t for t in node.outputs if not empty(t) and (t.outputs or is_protected(t, ctx))]


def attr(node: gs.Node, name: str, default: Any = None) -> Any:
    return node.attrs.get(name, default)


def input_or_none(node: gs.Node, i: int) -> gs.Tensor | None:
    if len(node.inputs) <= i or empty(node.inputs[i]):
        return None
    return node.inputs[i]


def per_channel(value: np.ndarray, out_rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """A constant that broadcasts against an output of rank ``out_rank`` along ``axis`` only,
    as a vector of ``channels`` values; None if it would broadcast along any other axis
    (or enlarge the output)."""
    if value.ndim > out_rank:
        return None
    full = (1,) * (out_rank - value.ndim) + value.shape
    for i, d in enumerate(full):
        if d != 1 and not (i == axis and d == channels):
            return None
    flat = value.reshape(-1)
    return np.broadcast_to(flat, (channels,)).copy() if flat.size in (1, channels) else None


def new_like(rw, t: gs.Tensor, suffix: str) -> gs.Variable:
    """A fresh intermediate with the dtype and shape of ``t``."""
    return rw.variable(f"{t.name}_{suffix}", dtype=t.dtype, shape=t.shape)


def constant_like(rw, base: gs.Tensor, suffix: str, values: np.ndarray, dtype=None) -> gs.Constant:
    """A new constant named after ``base`` (never modifies ``base``: it may be shared or mapped)."""
    dtype = dtype if dtype is not None else (base.dtype if base is not None and base.dtype is not None else values.dtype)
    return rw.constant(f"{base.name if base is not None else 'c'}_{suffix}", np.ascontiguousarray(values, dtype=dtype))


def can_bypass(node: gs.Node, x: gs.Tensor, ctx: PassContext) -> bool:
    """Can ``node`` (one output, computing the same values as ``x``) be removed? Yes if its
    output is no graph output (readers move to ``x``), or if ``x`` comes from a one-output
    node read only by ``node`` (that producer then writes the graph output itself)."""
    if len(node.outputs) != 1:
        return False
    if not is_protected(node.outputs[0], ctx):
        return True
    p = producer(x)
    return (p is not None and len(p.outputs) == 1 and feeds_only(x, node, ctx) and not subgraphs_of(p)
            and not is_protected(x, ctx))


def bypass(rw, node: gs.Node, x: gs.Tensor, protected: bool) -> None:
    """Remove ``node`` whose output equals ``x`` (``can_bypass`` said yes; ``protected``: its
    output is a graph output, so ``x``'s producer takes the output over)."""
    out = node.outputs[0]
    rw.remove_node(node)
    if not protected:
        rw.replace_all_uses(out, x)
        return
    p = producer(x)
    inputs, attrs = list(p.inputs), dict(p.attrs)
    rw.remove_node(p)
    rw.add_node(p.op, inputs, [out], attrs=attrs, name=p.name, domain=p.domain)


def fresh_node_name(rw, node: gs.Node, suffix: str) -> str:
    """A deterministic name for a node added next to ``node`` (ORT rejects two nodes of the
    same non-empty name); nameless nodes beget nameless nodes."""
    return rw.unique_name(f"{node.name}/{suffix}") if node.name else ""
