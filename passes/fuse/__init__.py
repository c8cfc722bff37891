"""fuse: pattern rewrites that turn exported op soup into the ops ONNX Runtime runs fastest.

Rule families, one module each (see their docstrings): ``algebra`` (no-op arithmetic,
constant chains), ``affine`` (BatchNorm and per-channel Mul/Add folded into Conv,
ConvTranspose and Gemm weights), ``activations`` (HardSwish/HardSigmoid, GELU), ``norm``
(LayerNormalization), ``gemm`` (MatMul+Add), ``reshape`` (Transpose/Reshape/Squeeze/Cast
chains and no-ops), ``pad`` (Pad into Conv/AveragePool), ``layout`` (Transposes pushed through
layout-agnostic ops until they cancel). Rules run on the rewrite driver to a fixed point, anchored at
the last node of their pattern so the fused node produces the same output tensor (graph
outputs keep their names). Folding scales into weights changes float rounding: APPROX.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.pass_base import Numerics, Pass, PassContext, PassResult
from onnxopt.passes.cleanup import remove_dead_nodes
from onnxopt.passes.fold.infer import establish_shapes_preserving, forget_shapes
from onnxopt.registry import register_pass
from onnxopt.rewrite import RewriteRule, apply_rules

from . import activations, affine, algebra, gemm, layout, norm, pad, reshape_chains
from .util import PROTECTED_KEY, protect_outputs

# family name -> rules(options, ctx)
FAMILIES = {
    "algebra": lambda o, ctx: algebra.rules(),
    "affine": lambda o, ctx: affine.rules() + affine.scalar_rules(),
    "activations": lambda o, ctx: activations.rules(o, ctx.opset),
    "norm": lambda o, ctx: norm.rules(),
    "gemm": lambda o, ctx: gemm.rules(),
    "reshape": lambda o, ctx: reshape_chains.rules(),
    "pad": lambda o, ctx: pad.rules(),
    "layout": lambda o, ctx: layout.rules(),
}


def build_rules(options, ctx: PassContext) -> list[RewriteRule]:
    rules: list[RewriteRule] = []
    for family, make in FAMILIES.items():
        if family not in (options.skip or ()):
            rules.extend(make(options, ctx))
    return rules


@register_pass
class Fuse(Pass):
    """Operator fusion: BatchNorm/affine into Conv/Gemm, activation and normalization patterns."""

    name = "fuse"
    numerics = Numerics.APPROX
    # shapes are established in run() (see fold.establish_shapes_preserving for why)
    requires = ("toposorted",)

    @dataclass(frozen=True)
    class Options:
        gelu: Literal["auto", "contrib", "off"] = field(default="auto", metadata={
            "help": "erf/tanh GELU -> Gelu: auto = ONNX Gelu from opset 20; contrib = com.microsoft.Gelu"})
        # None, not (): the pipeline printer writes an empty tuple as nothing at all
        skip: tuple[str, ...] | None = field(default=None, metadata={
            "help": "rule families to leave out: " + ", ".join(FAMILIES)})
        verify_fixpoint: bool = field(default=False, metadata={
            "help": "check that one more sweep finds nothing (tests)"})

        def __post_init__(self):
            unknown = sorted(set(self.skip or ()) - set(FAMILIES))
            if unknown:
                raise ValueError(f"unknown rule families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        filled = establish_shapes_preserving(graph, ctx)
        protect_outputs(graph, ctx)
        try:
            counts: Counter = apply_rules(graph, build_rules(self.options, ctx), ctx,
                                          verify_fixpoint=self.options.verify_fixpoint)
        finally:
            ctx.scratch.pop(PROTECTED_KEY, None)
        dead = 0
        if counts:
            for sub in list(ir.iter_graphs(graph)):
                dead += remove_dead_nodes(sub)
        stats = {k: v for k, v in counts.items() if v}
        if dead:
            stats["dead_nodes_removed"] = dead
        forget_shapes(filled)
        return PassResult(changed=bool(stats), stats=stats)
