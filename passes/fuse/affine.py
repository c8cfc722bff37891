"""Per-channel affine maps (y = x*s + t) folded into the weights of a neighbouring Conv,
ConvTranspose or Gemm.

Sources of such maps: BatchNormalization in inference mode, and Mul/Add/Sub/Div by a
constant that broadcasts along the channel axis only. After a producer the map always folds
(W' = W*s per output channel, b' = b*s + t). Before a Conv it folds only when the Conv pads
nothing: W' = W*s per input channel and b' = b + sum(W*t), which would be wrong at padded
borders (there the original sees zeros, not t).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import (attr, bypass, can_bypass, const, const_meta, constant_like, feeds_only, input_or_none,
                   is_protected, is_std, per_channel, producer, rank, scalar)

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")


@dataclass
class Affine:
    """y = x * scale + shift, per channel (vectors of the channel count)."""

    x: gs.Tensor                # the non-constant input
    scale: np.ndarray
    shift: np.ndarray
    nodes: list[gs.Node]        # the nodes that compute it (removed when folded)


@dataclass
class Linear:
    """A node whose output channels are rows of a constant weight. Matching reads only the
    weight's shape; ``w``/``b`` read the values once, when a rewrite needs them."""

    node: gs.Node
    x: gs.Tensor
    weight: gs.Constant
    bias: gs.Constant | None
    out_channels: int
    out_rank: int
    w_shape: tuple[int, ...] = ()

    @cached_property
    def w(self) -> np.ndarray:
        return const(self.weight)

    @cached_property
    def b(self) -> np.ndarray | None:
        return const(self.bias) if self.bias is not None else None


# ---------------------------------------------------------------------------------------------
# recognising linear producers and affine maps


def as_linear(node: gs.Node | None) -> Linear | None:
    if not is_std(node, *LINEAR_OPS) or len(node.outputs) != 1:
        return None
    w = input_or_none(node, 1)
    meta = const_meta(w)
    if meta is None or meta[1].kind != "f" or not meta[0]:
        return None
    shape = meta[0]
    b = input_or_none(node, 2)
    b_meta = const_meta(b) if b is not None else None
    if b is not None and b_meta is None:
        return None
    if node.op == "Conv":
        return Linear(node, node.inputs[0], w, b, shape[0], len(shape), shape)
    if node.op == "ConvTranspose":
        group = int(attr(node, "group", 1))
        return Linear(node, node.inputs[0], w, b, shape[1] * group, len(shape), shape)
    # Gemm: Y[M, N] = alpha * A' B' + beta * C
    if len(shape) != 2:
        return None
    n = shape[0] if int(attr(node, "transB", 0)) else shape[1]
    if b is not None and b_meta[0] not in ((), (1,), (n,), (1, n)):
        return None  # a C that varies along M cannot absorb a per-column shift
    return Linear(node, node.inputs[0], w, b, n, 2, shape)


def batchnorm_affine(bn: gs.Node, ctx: PassContext) -> Affine | None:
    """Inference-mode BatchNormalization over axis 1 as scale and shift."""
    if not is_std(bn, "BatchNormalization") or len(bn.inputs) < 5:
        return None
    if int(attr(bn, "training_mode", 0)) or int(attr(bn, "spatial", 1)) != 1 or "is_test" in bn.attrs and not attr(bn, "is_test"):
        return None
    if any(t.name and (t.outputs) for t in bn.outputs[1:]):
        return None  # running statistics are read: training graph
    gamma, beta, mean, var = (const(t) for t in bn.inputs[1:5])
    if any(v is None or v.ndim != 1 or v.dtype.kind != "f" for v in (gamma, beta, mean, var)):
        return None
    eps = float(attr(bn, "epsilon", 1e-5))
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return Affine(bn.inputs[0], scale, shift, [bn])


def elementwise_affine(node: gs.Node, out_rank: int | None, channels: int, axis: int = 1) -> Affine | None:
    """Mul/Add/Sub/Div by a constant that is per-channel along ``axis`` (or a scalar)."""
    if not is_std(node, "Mul", "Add", "Sub", "Div") or len(node.inputs) != 2 or out_rank is None:
        return None
    a, b = node.inputs
    ca, cb = const(a), const(b)
    if (ca is None) == (cb is None):
        return None
    x, c, const_first = (b, ca, True) if ca is not None else (a, cb, False)
    if c.dtype.kind != "f":
        return None
    v = per_channel(c, out_rank, channels, axis)
    if v is None:
        return None
    v = v.astype(np.float64)
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "Mul":
        return Affine(x, v, zeros, [node])
    if node.op == "Add":
        return Affine(x, ones, v, [node])
    if node.op == "Sub":
        return Affine(x, -ones, v, [node]) if const_first else Affine(x, ones, -v, [node])
    if const_first or np.any(v == 0):  # c / x is not affine
        return None
    return Affine(x, 1.0 / v, zeros, [node])


# ---------------------------------------------------------------------------------------------
# folding: one rule per linear node, absorbing the whole affine chain on each side at once, so
# its weights are rounded to their dtype once (a rule per neighbour would round them per step)


@dataclass
class Absorb:
    lin: Linear
    before: list[Affine]      # in application order; their input is the new node's input
    after: list[Affine]       # in application order; the last one's output is the new output


def _compose(chain: list[Affine], n: int) -> tuple[np.ndarray, np.ndarray]:
    scale, shift = np.ones(n), np.zeros(n)
    for aff in chain:
        scale, shift = scale * aff.scale, shift * aff.scale + aff.shift
    return scale, shift


def _conv_pads_nothing(conv: gs.Node) -> bool:
    auto = attr(conv, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return True
    if auto not in ("NOTSET", ""):
        return False
    return not any(int(p) for p in attr(conv, "pads", []) or [])


def _after_chain(lin: Linear, ctx: PassContext) -> list[Affine]:
    chain: list[Affine] = []
    t = lin.node.outputs[0]
    while True:
        readers = t.outputs
        if len(readers) != 1 or not feeds_only(t, readers[0], ctx):
            return chain
        nxt = readers[0]
        if is_std(nxt, "BatchNormalization"):
            aff = batchnorm_affine(nxt, ctx) if nxt.inputs[0] is t else None
        else:
            aff = elementwise_affine(nxt, lin.out_rank, lin.out_channels)
        if aff is None or aff.x is not t or aff.scale.shape != (lin.out_channels,):
            return chain
        chain.append(aff)
        t = nxt.outputs[0]


def _in_channels(lin: Linear) -> int | None:
    """Input channels an affine map before ``lin`` may act on, or None where it cannot fold:
    a Conv that pads (borders would see the shift), a ConvTranspose, a Gemm reading A^T."""
    shape = lin.w_shape
    if lin.node.op == "Conv" and _conv_pads_nothing(lin.node):
        return shape[1] * int(attr(lin.node, "group", 1))
    if lin.node.op == "Gemm" and not int(attr(lin.node, "transA", 0)):
        return shape[1] if int(attr(lin.node, "transB", 0)) else shape[0]
    return None


def _before_chain(lin: Linear, ctx: PassContext) -> list[Affine]:
    cin = _in_channels(lin)
    if cin is None:
        return []
    rank = len(lin.w_shape)
    chain: list[Affine] = []
    t, reader = lin.x, lin.node
    while True:
        node = producer(t)
        if node is None or not feeds_only(t, reader, ctx):
            break
        if is_std(node, "BatchNormalization"):
            aff = batchnorm_affine(node, ctx)
        else:
            aff = elementwise_affine(node, rank, cin)
        if aff is None or aff.scale.shape != (cin,):
            break
        chain.append(aff)
        t, reader = aff.x, node
    chain.reverse()
    return chain


def _match_absorb(node: gs.Node, ctx: PassContext):
    lin = as_linear(node)
    if lin is None:
        return None
    before, after = _before_chain(lin, ctx), _after_chain(lin, ctx)
    if not before and not after:
        return None
    return Absorb(lin, before, after)


def _rewrite_absorb(rw, node: gs.Node, m: Absorb) -> None:
    lin = m.lin
    w = lin.w
    b = lin.b.astype(np.float64) if lin.b is not None else None
    attrs: dict = {}
    x = lin.x
    if m.before and node.op == "Gemm":
        # alpha * (A*s + t) B + beta*C = alpha * A (diag(s) B) + (alpha * t B + beta*C)
        s_in, t_in = _compose(m.before, _in_channels(lin))
        b_mat = w.astype(np.float64).T if int(attr(node, "transB", 0)) else w.astype(np.float64)
        shift_in = float(attr(node, "alpha", 1.0)) * (t_in @ b_mat)
        b = shift_in + (b * float(attr(node, "beta", 1.0)) if b is not None else 0.0)
        attrs["beta"] = 1.0
        factor = s_in[None, :] if int(attr(node, "transB", 0)) else s_in[:, None]
        x = m.before[0].x
    elif m.before:  # Conv: y = W * (x*s_in + t_in) = (W*s_in) * x + sum(W*t_in)
        s_in, t_in = _compose(m.before, _in_channels(lin))
        group = int(attr(node, "group", 1))
        cout, cin_g = w.shape[0], w.shape[1]
        chan = (np.arange(cout)[:, None] // (cout // group)) * cin_g + np.arange(cin_g)[None, :]
        expand = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
        shift_in = (w.astype(np.float64) * t_in[chan][expand]).reshape(cout, -1).sum(axis=1)
        b = (b if b is not None else np.zeros(cout)) + shift_in
        factor = s_in[chan][expand]
        x = m.before[0].x
    else:
        factor = None
    if m.after:
        s_out, t_out = _compose(m.after, lin.out_channels)
        if node.op == "Gemm" and m.before:  # beta is already in b
            out_factor, bias, _ = _after_factors(lin, s_out, t_out, b, beta=1.0)
        else:
            out_factor, bias, attrs_after = _after_factors(lin, s_out, t_out, b)
            attrs.update(attrs_after)
        factor = out_factor if factor is None else factor * out_factor
    else:
        bias = b
    new_w = w * _in_weight_precision(np.asarray(factor), w)
    keep_bias = bias is not None and (lin.bias is not None or np.any(bias != 0))
    out = (m.after[-1].nodes[-1] if m.after else node).outputs[0]
    removed = [node] + [n for aff in m.before + m.after for n in aff.nodes]
    replace_linear(rw, lin, new_w, np.asarray(bias) if keep_bias else None, attrs, x, out, removed)


def _after_factors(lin: Linear, scale: np.ndarray, shift: np.ndarray, b: np.ndarray | None,
                   beta: float | None = None):
    """Weight factor (broadcastable to W), new bias and attribute changes for ``y*scale + shift``
    (``beta``: the Gemm's beta when it is not the node's own, e.g. already folded into ``b``)."""
    node = lin.node
    w = lin.w
    attrs: dict = {}
    if node.op == "Conv":
        factor = scale.reshape((-1,) + (1,) * (w.ndim - 1))
    elif node.op == "ConvTranspose":
        group = int(attr(node, "group", 1))
        per = scale.reshape(group, 1, w.shape[1])
        factor = np.broadcast_to(per, (group, w.shape[0] // group, w.shape[1])).reshape(w.shape[0], w.shape[1])
        factor = factor.reshape(factor.shape + (1,) * (w.ndim - 2))
    else:  # Gemm: beta folds into the new C, which is then added as is
        factor = scale[:, None] if int(attr(node, "transB", 0)) else scale[None, :]
        if b is not None:
            b = b * (float(attr(node, "beta", 1.0)) if beta is None else beta)
        attrs["beta"] = 1.0
    bias = (b * scale if b is not None else 0.0) + shift
    if node.op == "Gemm" and b is not None and b.ndim == 2:
        bias = np.broadcast_to(bias, b.shape)
    return factor, np.asarray(bias), attrs


def _in_weight_precision(factor: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The factor to multiply weights by: float32 weights times a float32 factor is one
    correctly rounded product (as exact as float64 math, four times lighter on big
    convolutions); other float weights are scaled in float64 and rounded once."""
    return factor.astype(np.float32 if w.dtype == np.float32 else np.float64)


def replace_linear(rw, lin: Linear, w: np.ndarray, bias: np.ndarray | None, attrs: dict,
                   x: gs.Tensor, out: gs.Tensor, removed: list[gs.Node]) -> None:
    node = lin.node
    dtype = lin.w.dtype
    new_w = constant_like(rw, lin.weight, "fused", w, dtype)
    inputs = [x, new_w]
    if bias is not None:
        inputs.append(constant_like(rw, lin.bias if lin.bias is not None else lin.weight, "bias_fused", bias, dtype))
    for n in removed:
        rw.remove_node(n)
    rw.add_node(node.op, inputs, [out], attrs={**node.attrs, **attrs}, name=node.name, domain=node.domain)


def rules() -> list[RewriteRule]:
    return [RewriteRule("affine_into_" + op.lower(), op, _match_absorb, _rewrite_absorb, benefit=2,
                        opsets=(7, 10_000)) for op in LINEAR_OPS]


# ---------------------------------------------------------------------------------------------
# a scalar factor pushed back into the weights that produced the tensor it scales

# ops through which multiplying by a scalar commutes (pure data movement)
MOVEMENT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def _scalable_source(t: gs.Tensor, ctx: PassContext, reader: gs.Node, depth: int = 0):
    """The chain [..., producer] from ``t`` back to a node whose output scales with its constant
    weights (MatMul/Gemm/Conv with constant B/W, optionally + constant bias), every link read
    only by the next one. None if there is no such chain."""
    node = producer(t)
    if node is None or not feeds_only(t, reader, ctx) or depth > 8:
        return None
    if is_std(node, *MOVEMENT):
        rest = _scalable_source(node.inputs[0], ctx, node, depth + 1)
        return None if rest is None else [node, *rest]
    if is_std(node, "Add") and len(node.inputs) == 2:
        for i in (0, 1):
            if const(node.inputs[1 - i]) is not None and const(node.inputs[i]) is None:
                inner = producer(node.inputs[i])
                if _weighted(inner) is not None and feeds_only(node.inputs[i], node, ctx):
                    return [node, inner]
        return None
    return [node] if _weighted(node) is not None else None


def _weighted(node: gs.Node | None) -> int | None:
    """Index of the constant weight input of a node linear in it, else None."""
    if is_std(node, "MatMul") and len(node.inputs) == 2:
        for i in (1, 0):
            if const(node.inputs[i]) is not None and const(node.inputs[i]).dtype.kind == "f":
                return i
    if is_std(node, "Gemm", "Conv", "ConvTranspose") and len(node.inputs) > 1:
        if const(node.inputs[1]) is not None and const(node.inputs[1]).dtype.kind == "f":
            if len(node.inputs) < 3 or not node.inputs[2].name or const(node.inputs[2]) is not None:
                return 1
    return None


def _match_scalar_into_weights(node: gs.Node, ctx: PassContext):
    """Mul(x, c) or Div(x, c) with scalar c, where x = MatMul(a, b) and a or b comes from
    constant weights through data movement only: scale those weights instead (the attention
    scale of transformer exports lands in the query projection)."""
    if not is_std(node, "Mul", "Div") or len(node.inputs) != 2:
        return None
    for xi, ci in ((0, 1), (1, 0)) if node.op == "Mul" else ((0, 1),):
        x, c_t = node.inputs[xi], node.inputs[ci]
        c, cv = scalar(c_t), const(c_t)
        if c is None or const(x) is not None or (cv.ndim and (rank(x) is None or cv.ndim > rank(x))):
            continue
        if node.op == "Div" and c == 0:
            continue
        mm = producer(x)
        if not is_std(mm, "MatMul") or not feeds_only(x, node, ctx) or not can_bypass(node, x, ctx):
            continue
        for operand in mm.inputs:
            chain = _scalable_source(operand, ctx, mm)
            if chain is not None:
                return x, chain, (c if node.op == "Mul" else 1.0 / c), is_protected(node.outputs[0], ctx)
    return None


def _rewrite_scalar_into_weights(rw, node: gs.Node, m) -> None:
    x, chain, factor, protected = m
    source = chain[-1]
    i = _weighted(source)
    w = source.inputs[i]
    wv = const(w)
    new_inputs = list(source.inputs)
    new_inputs[i] = constant_like(rw, w, "scaled", wv.astype(np.float64) * factor, wv.dtype)
    if source.op in ("Gemm", "Conv", "ConvTranspose") and len(source.inputs) > 2 and source.inputs[2].name:
        b = const(source.inputs[2])
        new_inputs[2] = constant_like(rw, source.inputs[2], "scaled", b.astype(np.float64) * factor, b.dtype)
    add = chain[-2] if len(chain) > 1 and chain[-2].op == "Add" else None
    source_out = source.outputs[0]
    rw.remove_node(source)
    rw.add_node(source.op, new_inputs, [source_out], attrs=dict(source.attrs), name=source.name, domain=source.domain)
    if add is not None:
        j = 0 if const(add.inputs[0]) is not None else 1
        b = const(add.inputs[j])
        add_inputs = list(add.inputs)
        add_inputs[j] = constant_like(rw, add.inputs[j], "scaled", b.astype(np.float64) * factor, b.dtype)
        add_out = add.outputs[0]
        rw.remove_node(add)
        rw.add_node("Add", add_inputs, [add_out], name=add.name)
    # the Mul goes: its input (the MatMul's output) now carries the scaled value
    bypass(rw, node, x, protected)


def scalar_rules() -> list[RewriteRule]:
    return [RewriteRule("scalar_into_weights", op, _match_scalar_into_weights, _rewrite_scalar_into_weights)
            for op in ("Mul", "Div")]
