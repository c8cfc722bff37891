"""Data-movement chains collapsed and no-op data movement removed.

Transpose(Transpose) composes (and vanishes when the composition is the identity);
Reshape after Reshape/Flatten/Squeeze/Unsqueeze keeps only the last when its target shape is
explicit; Squeeze(Unsqueeze) and Unsqueeze(Squeeze) on the same axes cancel; Cast to the type
the tensor already has goes, and Cast(Cast) keeps only the last when the first is lossless;
Reshape/Expand to the shape the tensor already has, identity Transposes and one-input Concats
go. Graph outputs are never bypassed (their names are the model's interface).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import attr, bypass, can_bypass, const, feeds_only, is_protected, is_std, producer, static_shape

SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _bypassing(node: gs.Node, x: gs.Tensor, ctx: PassContext):
    """Match object for removing ``node`` in favour of ``x``, or None."""
    return ("bypass", x, is_protected(node.outputs[0], ctx)) if can_bypass(node, x, ctx) else None


def _do_bypass(rw, node: gs.Node, m) -> None:
    bypass(rw, node, m[1], m[2])


def _removable(node: gs.Node, ctx: PassContext) -> bool:
    return len(node.outputs) == 1 and not is_protected(node.outputs[0], ctx)


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return sorted(int(a) for a in node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = const(node.inputs[1])
        return None if value is None else sorted(int(a) for a in value.reshape(-1))
    return None


# ---------------------------------------------------------------------------------------------
# Transpose


def _perm(node: gs.Node, rank: int | None) -> list[int] | None:
    perm = attr(node, "perm")
    if perm is not None:
        return [int(p) for p in perm]
    return list(reversed(range(rank))) if rank is not None else None


def _match_transpose(node: gs.Node, ctx: PassContext):
    x = node.inputs[0]
    r = len(x.shape) if x.shape is not None else None
    perm = _perm(node, r if r is not None else (len(attr(node, "perm")) if attr(node, "perm") else None))
    if perm is None:
        return None
    inner = producer(x)
    if is_std(inner, "Transpose"):
        p1 = _perm(inner, len(perm))
        if p1 is None or len(p1) != len(perm):
            return None
        composed = [p1[j] for j in perm]
        if composed == list(range(len(perm))):
            if feeds_only(x, node, ctx) and _removable(node, ctx):
                return ("cancel", inner)
            # the inner Transpose has other readers: only this one goes
            return ("bypass", inner.inputs[0], False) if _removable(node, ctx) else None
        return ("compose", inner, composed) if feeds_only(x, node, ctx) else None
    if perm == list(range(len(perm))):
        return _bypassing(node, x, ctx)
    return None


def _rewrite_transpose(rw, node: gs.Node, m) -> None:
    kind = m[0]
    if kind == "bypass":
        _do_bypass(rw, node, m)
        return
    inner = m[1]
    x = inner.inputs[0]
    out = node.outputs[0]
    rw.remove_node(node)
    rw.remove_node(inner)
    if kind == "cancel":
        rw.replace_all_uses(out, x)
    else:
        rw.add_node("Transpose", [x], [out], attrs={"perm": m[2]}, name=node.name)


# ---------------------------------------------------------------------------------------------
# Reshape family


def _explicit_shape(node: gs.Node) -> np.ndarray | None:
    """A Reshape's constant target that does not refer to its input's dims (no 0 copies)."""
    if not is_std(node, "Reshape") or len(node.inputs) < 2:
        return None
    shape = const(node.inputs[1])
    if shape is None or shape.ndim != 1:
        return None
    if not int(attr(node, "allowzero", 0)) and np.any(shape == 0):
        return None
    return shape


def _resolved_target(node: gs.Node, in_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    shape = const(node.inputs[1])
    if shape is None:
        return None
    allowzero = int(attr(node, "allowzero", 0))
    out = [in_shape[i] if (d == 0 and not allowzero and i < len(in_shape)) else int(d) for i, d in enumerate(shape)]
    total = int(np.prod(in_shape, dtype=np.int64))
    if out.count(-1) == 1:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return tuple(out) if int(np.prod(out, dtype=np.int64)) == total else None


def _match_reshape(node: gs.Node, ctx: PassContext):
    x = node.inputs[0]
    in_shape = static_shape(x)
    if in_shape is not None and _resolved_target(node, in_shape) == in_shape:
        return _bypassing(node, x, ctx)
    if _explicit_shape(node) is None:
        return None
    inner = producer(x)
    if is_std(inner, *SHAPE_ONLY) and feeds_only(x, node, ctx) and inner.inputs:
        return ("chain", inner)
    return None


def _rewrite_reshape(rw, node: gs.Node, m) -> None:
    if m[0] == "bypass":
        _do_bypass(rw, node, m)
        return
    inner = m[1]
    x, shape, out = inner.inputs[0], node.inputs[1], node.outputs[0]
    rw.remove_node(node)
    rw.remove_node(inner)
    rw.add_node("Reshape", [x, shape], [out], attrs=dict(node.attrs), name=node.name)


def _match_squeeze_pair(node: gs.Node, ctx: PassContext):
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a) are x."""
    other = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}[node.op]
    x = node.inputs[0]
    inner = producer(x)
    if not is_std(inner, other) or not feeds_only(x, node, ctx) or not _removable(node, ctx):
        return None
    a, b = _axes(node), _axes(inner)
    if a is None or b is None or a != b or any(v < 0 for v in a):
        return None
    return inner


def _rewrite_squeeze_pair(rw, node: gs.Node, inner) -> None:
    x, out = inner.inputs[0], node.outputs[0]
    rw.remove_node(node)
    rw.remove_node(inner)
    rw.replace_all_uses(out, x)


def _match_expand(node: gs.Node, ctx: PassContext):
    """Expand to a shape the input already has."""
    if len(node.inputs) != 2:
        return None
    shape = const(node.inputs[1])
    x = node.inputs[0]
    if shape is None or x.shape is None:
        return None
    r = len(x.shape)
    if shape.size > r:
        return None
    for d_shape, d_x in zip(shape[::-1], list(x.shape)[::-1]):
        if int(d_shape) != 1 and not (isinstance(d_x, int) and int(d_shape) == d_x):
            return None
    return _bypassing(node, x, ctx)


# ---------------------------------------------------------------------------------------------
# Cast

# from -> types that hold every value of it exactly
_LOSSLESS = {
    onnx.TensorProto.BOOL: {1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 16},
    onnx.TensorProto.INT8: {3, 5, 6, 7, 10, 1, 11},
    onnx.TensorProto.UINT8: {2, 4, 5, 6, 12, 7, 13, 10, 1, 11},
    onnx.TensorProto.INT16: {6, 7, 1, 11},
    onnx.TensorProto.UINT16: {4, 6, 12, 7, 13, 1, 11},
    onnx.TensorProto.INT32: {7, 11},
    onnx.TensorProto.UINT32: {12, 7, 13, 11},
    onnx.TensorProto.FLOAT16: {1, 11},
    onnx.TensorProto.BFLOAT16: {1, 11},
    onnx.TensorProto.FLOAT: {11},
}


def _elem(dtype) -> int | None:
    if dtype is None:
        return None
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except Exception:  # noqa: BLE001
        return None


def _match_cast(node: gs.Node, ctx: PassContext):
    if "saturate" in node.attrs and not int(node.attrs["saturate"]):
        return None
    to = attr(node, "to")
    x = node.inputs[0]
    if to is None or to == onnx.TensorProto.STRING:
        return None  # number formatting depends on the source type
    if _elem(x.dtype) == to:
        return _bypassing(node, x, ctx)
    inner = producer(x)
    if is_std(inner, "Cast") and feeds_only(x, node, ctx):
        src = _elem(inner.inputs[0].dtype)
        mid = attr(inner, "to")
        ok = _LOSSLESS.get(src)
        if src is not None and ok and mid in ok:
            if src == to and _removable(node, ctx):
                return ("cancel", inner)
            return ("chain", inner)
    return None


def _rewrite_cast(rw, node: gs.Node, m) -> None:
    if m[0] == "bypass":
        _do_bypass(rw, node, m)
        return
    inner = m[1]
    x, out = inner.inputs[0], node.outputs[0]
    rw.remove_node(node)
    rw.remove_node(inner)
    if m[0] == "cancel":
        rw.replace_all_uses(out, x)
    else:
        rw.add_node("Cast", [x], [out], attrs=dict(node.attrs), name=node.name)


def _match_concat1(node: gs.Node, ctx: PassContext):
    return _bypassing(node, node.inputs[0], ctx) if len(node.inputs) == 1 else None


def rules() -> list[RewriteRule]:
    return [
        RewriteRule("transpose_chain", "Transpose", _match_transpose, _rewrite_transpose, benefit=3),
        RewriteRule("reshape_chain", "Reshape", _match_reshape, _rewrite_reshape, benefit=3, opsets=(5, 10_000)),
        RewriteRule("squeeze_pair", "Squeeze", _match_squeeze_pair, _rewrite_squeeze_pair, benefit=3),
        RewriteRule("squeeze_pair", "Unsqueeze", _match_squeeze_pair, _rewrite_squeeze_pair, benefit=3),
        RewriteRule("noop_expand", "Expand", _match_expand, _do_bypass, benefit=3),
        RewriteRule("cast_chain", "Cast", _match_cast, _rewrite_cast, benefit=3),
        RewriteRule("single_concat", "Concat", _match_concat1, _do_bypass, benefit=3),
    ]
