"""Layout propagation: Transposes pushed down through layout-agnostic ops until they meet
their inverse and cancel (``reshape_chains.transpose_chain``).

NHWC exports (Keras, TF) wrap every convolution in Transpose(0,3,1,2) ... Transpose(0,2,3,1)
and do the BatchNorm scale, bias and activation in NHWC between them. Moving each
Transpose(0,2,3,1) below the elementwise ops that follow it makes it meet the next
Transpose(0,3,1,2), and the per-channel constants, now in NCHW, fold into the convolution
(``affine``). A push never adds a node: the Transpose must be read only by the op it passes,
and every other operand must be a constant (permuted to match) or the same Transpose of
another tensor (which then goes too).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import attr, const, constant_like, fresh_node_name, feeds_only, is_std, producer

UNARY = ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Erf", "Cast", "Identity", "LeakyRelu",
         "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
         "Not", "Gelu", "Celu", "Mish", "IsNaN", "IsInf", "ThresholdedRelu")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Equal", "Less", "Greater", "And", "Or",
          "Where", "PRelu", "Mod", "LessOrEqual", "GreaterOrEqual")
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum")


def _perm_of(t: gs.Tensor, reader: gs.Node, ctx: PassContext) -> tuple[gs.Node, list[int]] | None:
    """(Transpose, perm) if ``t`` is a Transpose output read by ``reader`` only."""
    node = producer(t)
    if not is_std(node, "Transpose") or not feeds_only(t, reader, ctx):
        return None
    perm = attr(node, "perm")
    if perm is None:
        return None
    return node, [int(p) for p in perm]


def _inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _permuted_constant(value: np.ndarray, perm: list[int]) -> np.ndarray | None:
    """The constant c' with T(x) op c == T(x op c') for T = Transpose(perm)."""
    r = len(perm)
    if value.ndim > r:
        return None
    if value.size == 1 and value.ndim <= 1:
        return value  # a scalar broadcasts the same either way
    full = value.reshape((1,) * (r - value.ndim) + value.shape)
    return np.ascontiguousarray(np.transpose(full, _inverse(perm)))


def _match(node: gs.Node, ctx: PassContext):
    if not is_std(node) or len(node.outputs) != 1:
        return None
    op = node.op
    if op in UNARY or op == "Clip" or (op == "Softmax" and ctx.opset >= 13) or op in REDUCE or op == "Pad":
        found = _perm_of(node.inputs[0], node, ctx)
        if found is None:
            return None
        plan = _plan_single(node, found[1], ctx)
        return None if plan is None else (found[0], found[1], plan)
    if op in BINARY or op == "Concat":
        return _match_multi(node, ctx)
    return None


def _plan_single(node: gs.Node, perm: list[int], ctx: PassContext):
    """New attributes/inputs for ``node`` on the untransposed tensor, and the perm after it."""
    op = node.op
    r = len(perm)
    if op in UNARY or op == "Clip":
        if op == "Clip" and any(const(t) is None for t in node.inputs[1:] if t.name):
            return None
        return {}, list(node.inputs[1:]), perm
    if op == "Softmax":
        axis = int(attr(node, "axis", -1)) % r
        return {"axis": perm[axis]}, [], perm
    if op == "Pad":
        return _plan_pad(node, perm)
    # reductions
    axes = _reduce_axes(node)
    if axes is None:
        return None
    axes = sorted(a % r for a in axes)
    new_axes = sorted(perm[a] for a in axes)
    keep = int(attr(node, "keepdims", 1))
    if keep:
        out_perm = perm
    else:
        rest_y = [j for j in range(r) if j not in axes]
        rest_x = sorted(perm[j] for j in rest_y)
        out_perm = [rest_x.index(perm[j]) for j in rest_y]
    if "axes" in node.attrs:
        return {"axes": new_axes}, [], out_perm
    return {}, [np.asarray(new_axes, dtype=np.int64)], out_perm


def _reduce_axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = const(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None  # all axes (or noop_with_empty_axes): leave it


def _plan_pad(node: gs.Node, perm: list[int]):
    r = len(perm)
    inv = _inverse(perm)
    from_attr = "pads" in node.attrs
    if from_attr:
        pads = [int(p) for p in node.attrs["pads"]]
    else:
        pv = const(node.inputs[1]) if len(node.inputs) > 1 else None
        if pv is None or (len(node.inputs) > 3 and node.inputs[3].name):
            return None
        pads = [int(p) for p in pv.reshape(-1)]
    if len(pads) != 2 * r:
        return None
    # output axis j of T is input axis perm[j]: pads of input axis i are those of T axis inv[i]
    new = [pads[inv[i]] for i in range(r)] + [pads[r + inv[i]] for i in range(r)]
    if from_attr:
        return {"pads": new}, [], perm
    return {}, [np.asarray(new, dtype=np.int64), *node.inputs[2:]], perm


def _match_multi(node: gs.Node, ctx: PassContext):
    """Binary/variadic ops and Concat: every operand the same Transpose, or a constant."""
    perm = None
    transposes = []
    for t in node.inputs:
        found = _perm_of(t, node, ctx) if t.name else None
        if found is not None:
            if perm is not None and found[1] != perm:
                return None
            perm = found[1]
            transposes.append(found[0])
        elif const(t) is None or node.op == "Concat":
            return None
    if perm is None:
        return None
    if node.op == "Concat":
        axis = int(attr(node, "axis", 0)) % len(perm)
        return transposes[0], perm, ({"axis": perm[axis]}, transposes, perm)
    for t in node.inputs:
        c = const(t)
        if c is not None and _permuted_constant(c, perm) is None:
            return None
    return transposes[0], perm, ({}, transposes, perm)


def _rewrite(rw, node: gs.Node, m) -> None:
    transpose, perm, (attrs, extra, out_perm) = m
    out = node.outputs[0]
    new_inputs: list[gs.Tensor] = []
    if node.op in BINARY or node.op == "Concat":
        by_output = {id(tr.outputs[0]): tr for tr in extra}
        for t in node.inputs:
            tr = by_output.get(id(t))
            if tr is not None:
                new_inputs.append(tr.inputs[0])
            else:
                c = const(t)
                new_inputs.append(constant_like(rw, t, "nchw", _permuted_constant(c, perm), c.dtype))
        removed = list(extra)
    else:
        new_inputs.append(transpose.inputs[0])
        for item in extra:
            if isinstance(item, np.ndarray):
                new_inputs.append(constant_like(rw, None, f"{node.name or node.op}_layout", item, item.dtype))
            else:
                new_inputs.append(item)
        removed = [transpose]
    new_attrs = {**node.attrs, **attrs}
    rw.remove_node(node)
    for tr in removed:
        rw.remove_node(tr)
    if out_perm == list(range(len(out_perm))):
        rw.add_node(node.op, new_inputs, [out], attrs=new_attrs, name=node.name, domain=node.domain)
        return
    mid_shape = None
    if out.shape is not None and len(out.shape) == len(out_perm):
        inv = _inverse(out_perm)
        mid_shape = [out.shape[inv[i]] for i in range(len(out_perm))]
    mid = rw.variable(f"{out.name}_pre_transpose", dtype=out.dtype, shape=mid_shape)
    rw.add_node(node.op, new_inputs, [mid], attrs=new_attrs, name=node.name, domain=node.domain)
    rw.add_node("Transpose", [mid], [out], attrs={"perm": list(out_perm)}, name=fresh_node_name(rw, node, "layout"))


def rules() -> list[RewriteRule]:
    ops = set(UNARY) | set(BINARY) | set(REDUCE) | {"Clip", "Softmax", "Pad", "Concat"}
    return [RewriteRule("push_transpose", op, _match, _rewrite, benefit=1) for op in sorted(ops)]
