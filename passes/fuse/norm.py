"""LayerNorm spelled with ReduceMean (PyTorch < 2 / Paddle / TF exports) -> LayerNormalization.

    mean = ReduceMean(x, axes)        d = x - mean          var = ReduceMean(d*d or d^2, axes)
    y = d / Sqrt(var + eps) [* gamma] [+ beta]

becomes ``LayerNormalization(x, gamma, beta, axis=-k, epsilon=eps)`` when the reduced axes are
the last k axes. The op exists from opset 17; earlier models keep the spelled-out form.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import attr, const, constant_like, feeds_only, is_scalar, is_std, producer, rank, scalar


def _reduced_axes(node: gs.Node) -> list[int] | None:
    if not is_std(node, "ReduceMean") or not int(attr(node, "keepdims", 1)):
        return None
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = const(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None


def _trailing(axes: list[int], r: int | None) -> int | None:
    """k if ``axes`` are exactly the last k axes of a rank-r tensor."""
    if r is None:
        if sorted(axes) == list(range(-len(axes), 0)):
            return len(axes)
        return None
    norm = sorted(a + r if a < 0 else a for a in axes)
    return len(norm) if norm == list(range(r - len(norm), r)) else None


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is t:
        return node.inputs[1]
    if node.inputs[1] is t:
        return node.inputs[0]
    return None


def _match_core(div: gs.Node, ctx: PassContext):
    """d / sqrt(var + eps) rooted at the Div; returns (x, eps, axes count, nodes)."""
    if not is_std(div, "Div") or len(div.inputs) != 2:
        return None
    d, s = div.inputs
    sub, sqrt = producer(d), producer(s)
    if not is_std(sub, "Sub") or not is_std(sqrt, "Sqrt") or not feeds_only(s, div, ctx):
        return None
    x, mean_t = sub.inputs
    mean = producer(mean_t)
    axes = _reduced_axes(mean) if mean is not None else None
    if axes is None or mean.inputs[0] is not x or not feeds_only(mean_t, sub, ctx):
        return None
    k = _trailing(axes, rank(x))
    add = producer(sqrt.inputs[0])
    if k is None or not is_std(add, "Add") or not feeds_only(sqrt.inputs[0], sqrt, ctx):
        return None
    eps = None
    var_t = None
    for i in (0, 1):
        if scalar(add.inputs[i]) is not None:
            eps, var_t = scalar(add.inputs[i]), add.inputs[1 - i]
    var = producer(var_t) if var_t is not None else None
    if eps is None or _reduced_axes(var) != axes or not feeds_only(var_t, add, ctx):
        return None
    sq = producer(var.inputs[0])
    if not feeds_only(var.inputs[0], var, ctx):
        return None
    if is_std(sq, "Pow") and sq.inputs[0] is d and is_scalar(sq.inputs[1], 2.0):
        pass
    elif is_std(sq, "Mul") and sq.inputs[0] is d and sq.inputs[1] is d:
        pass
    else:
        return None
    # d feeds exactly the square and the Div
    readers = {id(n) for n in d.outputs}
    if readers != {id(sq), id(div)}:
        return None
    return x, eps, k, [div, sqrt, add, var, sq, sub, mean]


def _affine_param(node: gs.Node | None, t: gs.Tensor, op: str, normalized: tuple[int, ...] | None):
    """The constant of ``t * gamma`` / ``t + beta`` if it is a function of the normalized axes."""
    if not is_std(node, op):
        return None
    c = _other(node, t)
    value = const(c) if c is not None else None
    if value is None or value.dtype.kind != "f":
        return None
    if normalized is None:
        return None
    if value.ndim > len(normalized) and any(d != 1 for d in value.shape[:-len(normalized)]):
        return None
    try:
        return np.broadcast_to(value.reshape(value.shape[max(0, value.ndim - len(normalized)):]), normalized)
    except ValueError:
        return None


def _match_layernorm(node: gs.Node, ctx: PassContext):
    """Rooted at the last node: the Div, or the Mul by gamma, or the Add of beta."""
    core = None
    chain = [node]
    if is_std(node, "Add"):
        mul = next((producer(t) for t in node.inputs if is_std(producer(t), "Mul")), None)
        if mul is not None:
            div = next((producer(t) for t in mul.inputs if is_std(producer(t), "Div")), None)
            if div is not None:
                core = _match_core(div, ctx)
                chain = [node, mul]
    elif is_std(node, "Mul"):
        div = next((producer(t) for t in node.inputs if is_std(producer(t), "Div")), None)
        if div is not None and not _next_is_beta(node, ctx):
            core = _match_core(div, ctx)
    elif is_std(node, "Div") and not _next_is_gamma(node, ctx):
        core = _match_core(node, ctx)
        chain = []
    if core is None:
        return None
    x, eps, k, nodes = core
    shape = x.shape
    normalized = tuple(shape[-k:]) if shape is not None and all(isinstance(d, int) for d in shape[-k:]) else None
    gamma = beta = None
    if chain:
        mul = chain[-1]
        normed = nodes[0].outputs[0]
        if not feeds_only(normed, mul, ctx):
            return None
        gamma = _affine_param(mul, normed, "Mul", normalized)
        if gamma is None:
            return None
        if len(chain) == 2:
            if not feeds_only(mul.outputs[0], node, ctx):
                return None
            beta = _affine_param(node, mul.outputs[0], "Add", normalized)
            if beta is None:
                return None
    if normalized is None:
        return None
    return x, eps, k, normalized, gamma, beta, nodes + chain[1:] + ([node] if chain else [])


def _next_is_gamma(div: gs.Node, ctx: PassContext) -> bool:
    readers = div.outputs[0].outputs
    return len(readers) == 1 and is_std(readers[0], "Mul")


def _next_is_beta(mul: gs.Node, ctx: PassContext) -> bool:
    readers = mul.outputs[0].outputs
    return len(readers) == 1 and is_std(readers[0], "Add")


def _rewrite_layernorm(rw, node: gs.Node, m) -> None:
    x, eps, k, normalized, gamma, beta, nodes = m
    out = node.outputs[0]
    dtype = x.dtype if x.dtype is not None else np.float32
    g = gamma if gamma is not None else np.ones(normalized)
    inputs = [x, constant_like(rw, None, "ln_scale", np.asarray(g), dtype)]
    if beta is not None:
        inputs.append(constant_like(rw, None, "ln_bias", np.asarray(beta), dtype))
    seen = set()
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            rw.remove_node(n)
    rw.add_node("LayerNormalization", inputs, [out], attrs={"axis": -k, "epsilon": float(eps)}, name=node.name)


def rules() -> list[RewriteRule]:
    return [RewriteRule("layernorm", op, _match_layernorm, _rewrite_layernorm, benefit=4, opsets=(17, 10_000))
            for op in ("Add", "Mul", "Div")]
