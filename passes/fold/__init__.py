"""fold: compute offline whatever does not depend on the model's inputs.

Modules, one job each:

* ``shape_values`` / ``dims``: shape arithmetic. ``Shape``/``Size`` of tensors whose shape is
  static, followed through ``Gather``/``Slice``/``Concat``/``Unsqueeze``/``Squeeze``/``Cast``/
  ``Equal``/``Where`` chains, fold to constants. Symbolic dimensions are tracked (``dims``:
  which unknown sizes are provably equal) but never frozen: a ``Reshape`` target built from
  them becomes ``0`` (copy this dimension) / ``-1`` (infer it), and an ``Expand`` to a shape
  its input already has goes. Both stay correct for every input size.
* ``constants`` / ``evaluate``: every node whose inputs are all constants is evaluated by ONNX
  Runtime (optimizations off, so the value is bit-identical to what the model computes at run
  time), onnx's reference evaluator as the fallback. A graph's whole constant region runs in
  one session; only when that fails is the batch split until the failing nodes are isolated.
  Values come back as raw bytes, so every dtype (bfloat16, float8, int4, strings) stays exact;
  what the model's opset cannot hold (e.g. a bool Constant node before opset 9) stays a node.
* ``branches``: ``If`` with a constant condition becomes the branch it takes.
* ``infer``: onnx shape inference without touching the caller's model or copying weights.

A size guard keeps Tile/Expand/ConstantOfShape/Range from bloating the file: a folded tensor
may be at most ``max-growth`` bytes larger than the constants it is computed from; otherwise
its producer stays. Subgraphs (If/Loop/Scan bodies) are folded too; a value from an outer
scope is only constant if it is a constant there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxopt.pass_base import Numerics, Pass, PassContext, PassResult
from onnxopt.passes.cleanup import lift_constants, merge_duplicate_constants, remove_dead_nodes
from onnxopt.registry import register_pass
from onnxopt.rewrite import subgraphs_of

from .branches import inline_constant_ifs
from .constants import fold_constant_nodes
from .dims import Dims
from .infer import establish_shapes_preserving, forget_shapes
from .shape_values import drop_noop_expands, fold_static_shapes, relax_reshape_shapes

# statistics that report, without meaning the graph changed
INFO_STATS = {"skipped_by_size_guard", "evaluator_runs"}


@register_pass
class Fold(Pass):
    """Constant folding and static shape arithmetic, evaluated in ONNX Runtime."""

    name = "fold"
    numerics = Numerics.EXACT
    # "shapes" is established by run() itself (infer.py says why) and forgotten afterwards.
    requires = ("toposorted",)

    @dataclass(frozen=True)
    class Options:
        max_growth: int = field(default=1 << 20, metadata={
            "help": "bytes a folded tensor may add beyond the constants it replaces (size guard)"})
        shapes: bool = field(default=True, metadata={
            "help": "fold shape arithmetic from inferred static shapes"})
        max_iters: int = field(default=4, metadata={"help": "shape/constant sweeps per graph"})

        def __post_init__(self):
            if self.max_growth < 0:
                raise ValueError("max-growth must be >= 0")
            if self.max_iters < 1:
                raise ValueError("max-iters must be >= 1")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter = Counter()
        filled = establish_shapes_preserving(graph, ctx) if self.options.shapes else []
        self._fold_graph(graph, ctx, stats, root=graph)
        changed = any(v for k, v in stats.items() if k not in INFO_STATS)
        forget_shapes(filled)
        return PassResult(changed=changed, stats={k: v for k, v in stats.items() if v})

    def _fold_graph(self, graph: gs.Graph, ctx: PassContext, stats: Counter, root: gs.Graph) -> None:
        folded_any = False
        for _ in range(self.options.max_iters):
            step: Counter = Counter()
            if ctx.ir_version >= 4:
                step["constants_lifted"] += lift_constants(graph)
            step["ifs_inlined"] += inline_constant_ifs(graph)
            if self.options.shapes:
                dims = Dims(graph)
                step["shapes_folded"] += fold_static_shapes(graph, ctx, dims)
                step["reshapes_relaxed"] += relax_reshape_shapes(graph, dims)
                step["expands_dropped"] += drop_noop_expands(graph, dims)
            step.update(fold_constant_nodes(graph, ctx, self.options.max_growth, root))
            stats.update(step)
            if not any(v for k, v in step.items() if k not in INFO_STATS):
                break
            folded_any = True
            stats["dead_nodes_removed"] += remove_dead_nodes(graph)
            graph.toposort(recurse_subgraphs=False)
        if folded_any and ctx.ir_version >= 4:
            stats["initializers_merged"] += merge_duplicate_constants(graph)
        for node in graph.nodes:
            for sub in subgraphs_of(node):
                self._fold_graph(sub, ctx, stats, root)


__all__ = ["Fold", "establish_shapes_preserving"]
