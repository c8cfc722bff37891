"""Pad folded into the Conv or AveragePool that reads it: a zero constant Pad of the spatial
axes only is what the consumer's own ``pads`` does (AveragePool then has to count the padded
zeros, ``count_include_pad=1``, as the explicit Pad made it). A layout Transpose between the
two (NHWC exports pad before converting to NCHW) is looked through: padding commutes with it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import attr, const, feeds_only, is_std, producer


def _pad_amounts(pad: gs.Node) -> np.ndarray | None:
    """The [begin..., end...] pads of a zero constant Pad over all axes, else None."""
    mode = attr(pad, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return None
    if "pads" in pad.attrs:  # opset < 11
        if float(attr(pad, "value", 0.0)) != 0.0:
            return None
        return np.asarray(pad.attrs["pads"], dtype=np.int64)
    pads = const(pad.inputs[1]) if len(pad.inputs) > 1 else None
    if pads is None:
        return None
    if len(pad.inputs) > 2 and pad.inputs[2].name:
        value = const(pad.inputs[2])
        if value is None or np.any(value != 0):
            return None
    if len(pad.inputs) > 3 and pad.inputs[3].name:
        return None  # axes input (opset 18): rare, not handled
    return pads.astype(np.int64)


def _auto_pad_off(node: gs.Node) -> bool:
    auto = attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "")


def _match(node: gs.Node, ctx: PassContext):
    if not _auto_pad_off(node) or not node.inputs:
        return None
    x = node.inputs[0]
    pad = producer(x)
    transpose = None
    if is_std(pad, "Transpose") and feeds_only(x, node, ctx):
        # NHWC exports pad before their layout Transpose: Pad commutes with it
        transpose, x = pad, pad.inputs[0]
        pad = producer(x)
    if not is_std(pad, "Pad") or not feeds_only(x, transpose or node, ctx):
        return None
    pads = _pad_amounts(pad)
    if pads is None or pads.size % 2 or np.any(pads < 0):
        return None
    r = pads.size // 2
    if transpose is not None:
        perm = attr(transpose, "perm")
        if perm is None or len(perm) != r:
            return None
        # output axis i of the Transpose is its input axis perm[i]
        pads = np.concatenate([pads[:r][list(perm)], pads[r:][list(perm)]])
    begin, end = pads[:r], pads[r:]
    if r < 3 or begin[0] or begin[1] or end[0] or end[1]:
        return None  # batch or channel padded: not a spatial pad
    spatial = r - 2
    own = np.asarray(attr(node, "pads", [0] * (2 * spatial)), dtype=np.int64)
    if own.size != 2 * spatial:
        return None
    if node.op == "AveragePool" and np.any(own) and not int(attr(node, "count_include_pad", 0)):
        return None  # its own pads are not counted, the Pad's are: cannot merge both
    merged = own + np.concatenate([begin[2:], end[2:]])
    return pad, transpose, [int(v) for v in merged]


def _rewrite(rw, node: gs.Node, m) -> None:
    pad, transpose, merged = m
    attrs = dict(node.attrs)
    attrs["pads"] = merged
    if node.op == "AveragePool":
        attrs["count_include_pad"] = 1
    source = pad.inputs[0]
    if transpose is not None:  # the Transpose now reads the unpadded tensor
        moved = rw.variable(f"{transpose.outputs[0].name}_unpadded", dtype=transpose.outputs[0].dtype)
        perm = list(transpose.attrs["perm"])
        name = transpose.name
        rw.remove_node(transpose)
        rw.add_node("Transpose", [source], [moved], attrs={"perm": perm}, name=name)
        source = moved
    inputs = [source, *node.inputs[1:]]
    outputs = list(node.outputs)
    rw.remove_node(node)
    rw.remove_node(pad)
    rw.add_node(node.op, inputs, outputs, attrs=attrs, name=node.name)


def rules() -> list[RewriteRule]:
    return [RewriteRule("pad_into_conv", "Conv", _match, _rewrite, benefit=2),
            RewriteRule("pad_into_pool", "AveragePool", _match, _rewrite, benefit=2, opsets=(7, 10_000))]
