"""Arithmetic that does nothing (x*1, x+0, x-0, x/1, x^1) and chains of constant Mul or Add
collapsed into one (Mul(Mul(x, a), b) -> Mul(x, a*b))."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import bypass, can_bypass, const, constant_like, feeds_only, is_protected, is_std, producer, rank

NEUTRAL = {"Mul": (1.0, "either"), "Add": (0.0, "either"), "Sub": (0.0, "second"), "Div": (1.0, "second"),
           "Pow": (1.0, "second")}


def _keeps_shape(x: gs.Tensor, c: np.ndarray) -> bool:
    """Broadcasting ``c`` against ``x`` leaves x's shape (and so the output's) as it is."""
    if c.ndim == 0:
        return True
    r = rank(x)
    return r is not None and c.ndim <= r and all(d == 1 for d in c.shape)


def _match_neutral(node: gs.Node, ctx: PassContext):
    if not is_std(node) or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    value, side = NEUTRAL[node.op]
    for i in ((0, 1) if side == "either" else (1,)):
        c = const(node.inputs[i])
        x = node.inputs[1 - i]
        if c is None or const(x) is not None or not np.all(c == value):
            continue
        if x.dtype is not None and c.dtype != x.dtype:
            continue
        if _keeps_shape(x, c) and can_bypass(node, x, ctx):
            return x, is_protected(node.outputs[0], ctx)
    return None


def _rewrite_neutral(rw, node: gs.Node, m) -> None:
    bypass(rw, node, m[0], m[1])


def _match_chain(node: gs.Node, ctx: PassContext):
    """Mul(Mul(x, a), b) or Add(Add(x, a), b) with constant a, b."""
    if not is_std(node, "Mul", "Add") or len(node.inputs) != 2:
        return None
    for i in (0, 1):
        inner_t, b = node.inputs[i], const(node.inputs[1 - i])
        inner = producer(inner_t)
        if b is None or not is_std(inner, node.op) or not feeds_only(inner_t, node, ctx):
            continue
        for j in (0, 1):
            a, x = const(inner.inputs[j]), inner.inputs[1 - j]
            if a is not None and const(x) is None and a.dtype == b.dtype:
                return inner, x, a, b
    return None


def _rewrite_chain(rw, node: gs.Node, m) -> None:
    inner, x, a, b = m
    combined = (a * b) if node.op == "Mul" else (a + b)
    c = constant_like(rw, node.inputs[0] if const(node.inputs[0]) is not None else node.inputs[1], "merged",
                      combined, a.dtype)
    out = node.outputs[0]
    rw.remove_node(node)
    rw.remove_node(inner)
    rw.add_node(node.op, [x, c], [out], name=node.name)


def rules() -> list[RewriteRule]:
    out = [RewriteRule(f"neutral_{op.lower()}", op, _match_neutral, _rewrite_neutral, benefit=5) for op in NEUTRAL]
    out += [RewriteRule(f"{op.lower()}_chain", op, _match_chain, _rewrite_chain, benefit=1) for op in ("Mul", "Add")]
    return out
