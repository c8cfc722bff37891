"""Activations exporters spell out op by op.

* hard-swish ``x * relu6(x + 3) / 6`` (Paddle, MobileNetV3): ``HardSwish`` from opset 14,
  before that ``x * HardSigmoid(x)`` (two nodes instead of four);
* hard-sigmoid ``relu6(x + 3) / 6`` -> ``HardSigmoid(alpha=1/6, beta=0.5)``;
* ``x * HardSigmoid(x)`` with those constants -> ``HardSwish`` (opset 14+);
* erf-GELU ``0.5 * x * (1 + erf(x / sqrt 2))`` -> ``Gelu`` (opset 20), or ORT's contrib
  ``com.microsoft.Gelu`` when asked (``gelu=contrib``); tanh-GELU likewise with
  ``approximate="tanh"`` / ``com.microsoft.FastGelu``.

``x * Sigmoid(x)`` (SiLU/swish) is left as it is: ORT fuses it itself at session start, and
no standard op is faster.
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import attr, const, fresh_node_name, feeds_only, is_scalar, is_std, producer, scalar

SIXTH = 1.0 / 6.0


# ---------------------------------------------------------------------------------------------
# pieces


def _div_by(node: gs.Node | None, value: float) -> gs.Tensor | None:
    """n if ``node`` computes ``n / value`` or ``n * (1/value)``, else None."""
    if is_std(node, "Div") and len(node.inputs) == 2 and is_scalar(node.inputs[1], value):
        return node.inputs[0]
    if is_std(node, "Mul") and len(node.inputs) == 2:
        for i in (0, 1):
            if is_scalar(node.inputs[i], 1.0 / value) and const(node.inputs[1 - i]) is None:
                return node.inputs[1 - i]
    return None


def _clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    if not is_std(node, "Clip"):
        return None
    if "min" in node.attrs or "max" in node.attrs or len(node.inputs) == 1:
        return float(attr(node, "min", -math.inf)), float(attr(node, "max", math.inf))
    lo = scalar(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else -math.inf
    hi = scalar(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else math.inf
    return lo, hi


def _relu6_of_plus3(t: gs.Tensor, ctx: PassContext):
    """x if ``t`` is ``clip(x + 3, 0, 6)`` (its intermediates read by nothing else)."""
    clip = producer(t)
    bounds = _clip_bounds(clip) if clip is not None else None
    if bounds is None or bounds[0] is None or bounds[1] is None:
        return None
    if abs(bounds[0]) > 1e-7 or abs(bounds[1] - 6.0) > 1e-6:
        return None
    added = clip.inputs[0]
    add = producer(added)
    if not is_std(add, "Add") or not feeds_only(added, clip, ctx):
        return None
    for i in (0, 1):
        if is_scalar(add.inputs[i], 3.0) and const(add.inputs[1 - i]) is None:
            return add.inputs[1 - i], [clip, add]
    return None


def _is_hard_swish_sigmoid(node: gs.Node) -> bool:
    return (is_std(node, "HardSigmoid") and abs(float(attr(node, "alpha", 0.2)) - SIXTH) < 1e-6
            and abs(float(attr(node, "beta", 0.5)) - 0.5) < 1e-6)


def _product_factors(node: gs.Node, ctx: PassContext):
    """The factors of a two-level Mul tree rooted at ``node``, with the inner Muls it used."""
    if not is_std(node, "Mul") or len(node.inputs) != 2:
        return None
    factors, inner = [], []
    for t in node.inputs:
        p = producer(t)
        if is_std(p, "Mul") and len(p.inputs) == 2 and feeds_only(t, node, ctx):
            factors.extend(p.inputs)
            inner.append(p)
        else:
            factors.append(t)
    return factors, inner


# ---------------------------------------------------------------------------------------------
# hard-swish / hard-sigmoid


def _match_hardsigmoid(node: gs.Node, ctx: PassContext):
    """relu6(x + 3) / 6, rooted at the Div (or Mul by 1/6)."""
    numerator = _div_by(node, 6.0)
    if numerator is None:
        return None
    inner = _relu6_of_plus3(numerator, ctx)
    if inner is None or not feeds_only(numerator, node, ctx):
        return None
    x, nodes = inner
    return x, nodes


def _rewrite_hardsigmoid(rw, node: gs.Node, m) -> None:
    x, nodes = m
    out = node.outputs[0]
    for n in (node, *nodes):
        rw.remove_node(n)
    rw.add_node("HardSigmoid", [x], [out], attrs={"alpha": SIXTH, "beta": 0.5}, name=node.name)


def _match_hardswish(node: gs.Node, ctx: PassContext):
    """x * relu6(x + 3) / 6 in any association, rooted at its last Mul/Div."""
    # (x * relu6(x+3)) / 6
    numerator = _div_by(node, 6.0)
    if numerator is not None:
        mul = producer(numerator)
        if is_std(mul, "Mul") and len(mul.inputs) == 2 and feeds_only(numerator, node, ctx):
            for i in (0, 1):
                inner = _relu6_of_plus3(mul.inputs[i], ctx)
                if inner is not None and inner[0] is mul.inputs[1 - i] and feeds_only(mul.inputs[i], mul, ctx):
                    return inner[0], [mul, *inner[1]], ctx.opset
    # x * (relu6(x+3) / 6)
    if is_std(node, "Mul") and len(node.inputs) == 2:
        for i in (0, 1):
            div = producer(node.inputs[i])
            numerator = _div_by(div, 6.0)
            if numerator is None or not feeds_only(node.inputs[i], node, ctx):
                continue
            inner = _relu6_of_plus3(numerator, ctx)
            if inner is not None and inner[0] is node.inputs[1 - i] and feeds_only(numerator, div, ctx):
                return inner[0], [div, *inner[1]], ctx.opset
    # x * HardSigmoid(x) -> HardSwish (only where HardSwish exists)
    if is_std(node, "Mul") and len(node.inputs) == 2 and ctx.opset >= 14:
        for i in (0, 1):
            hs = producer(node.inputs[i])
            if _is_hard_swish_sigmoid(hs) and hs.inputs[0] is node.inputs[1 - i] and feeds_only(node.inputs[i], node, ctx):
                return node.inputs[1 - i], [hs], ctx.opset
    return None


def _rewrite_hardswish(rw, node: gs.Node, m) -> None:
    x, nodes, opset = m
    out = node.outputs[0]
    for n in (node, *nodes):
        rw.remove_node(n)
    if opset >= 14:
        rw.add_node("HardSwish", [x], [out], name=node.name)
        return
    gate = rw.variable(f"{out.name}_hardsigmoid", dtype=out.dtype, shape=out.shape)
    rw.add_node("HardSigmoid", [x], [gate], attrs={"alpha": SIXTH, "beta": 0.5}, name=fresh_node_name(rw, node, "gate"))
    rw.add_node("Mul", [x, gate], [out], name=node.name)


# ---------------------------------------------------------------------------------------------
# GELU


def _gelu_match(node: gs.Node, ctx: PassContext, target: str):
    """0.5 * x * (1 + erf(x / sqrt2)) rooted at the outer Mul."""
    got = _product_factors(node, ctx)
    if got is None or len(got[0]) != 3:
        return None
    factors, inner = got
    half = [f for f in factors if is_scalar(f, 0.5)]
    if len(half) != 1:
        return None
    rest = [f for f in factors if f is not half[0]]
    for a, x in ((rest[0], rest[1]), (rest[1], rest[0])):
        add = producer(a)
        if not is_std(add, "Add") or len(add.inputs) != 2 or not _single_use(a, inner + [node], ctx):
            continue
        for j in (0, 1):
            if not is_scalar(add.inputs[j], 1.0):
                continue
            erf_t = add.inputs[1 - j]
            erf = producer(erf_t)
            if not is_std(erf, "Erf") or not feeds_only(erf_t, add, ctx):
                continue
            div = producer(erf.inputs[0])
            if _div_by(div, math.sqrt(2.0)) is not x or not feeds_only(erf.inputs[0], erf, ctx):
                continue
            return x, [*inner, add, erf, div], target
    return None


def _single_use(t: gs.Tensor, readers: list[gs.Node], ctx: PassContext) -> bool:
    return any(feeds_only(t, r, ctx) for r in readers)


def _rewrite_gelu(rw, node: gs.Node, m) -> None:
    x, nodes, target = m
    out = node.outputs[0]
    for n in (node, *nodes):
        rw.remove_node(n)
    if target == "onnx":
        rw.add_node("Gelu", [x], [out], name=node.name)
    else:
        rw.add_node("Gelu", [x], [out], name=node.name, domain="com.microsoft")


def gelu_rules(mode: str, opset: int) -> list[RewriteRule]:
    if mode == "off":
        return []
    if mode == "contrib":
        target = "contrib"
    elif opset >= 20:
        target = "onnx"
    else:
        return []

    def match(node, ctx):
        return _gelu_match(node, ctx, target)

    return [RewriteRule("gelu", "Mul", match, _rewrite_gelu, benefit=4)]


def rules(options, opset: int) -> list[RewriteRule]:
    out = [
        RewriteRule("hardswish", "Div", _match_hardswish, _rewrite_hardswish, benefit=4, opsets=(6, 10_000)),
        RewriteRule("hardswish", "Mul", _match_hardswish, _rewrite_hardswish, benefit=4, opsets=(6, 10_000)),
        RewriteRule("hardsigmoid", "Div", _match_hardsigmoid, _rewrite_hardsigmoid, benefit=3, opsets=(6, 10_000)),
        RewriteRule("hardsigmoid", "Mul", _match_hardsigmoid, _rewrite_hardsigmoid, benefit=3, opsets=(6, 10_000)),
    ]
    return out + gelu_rules(options.gelu, opset)
