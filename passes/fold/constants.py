"""Constant evaluation of whole graphs: find the constant region, evaluate it in one go,
keep what the size guard or the model's opset cannot hold, and replace the rest."""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt.pass_base import PassContext
from onnxopt.passes.cleanup import NONDETERMINISTIC
from onnxopt.rewrite import outer_inputs, subgraphs_of

from .common import constant_nbytes, is_empty
from .evaluate import Evaluator, Value, named

EVALUATED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Ops that make a node's result depend on more than its inputs' values.
NOT_FOLDABLE = NONDETERMINISTIC | {"RandomNormal", "RandomUniform"}



def fold_constant_nodes(graph: gs.Graph, ctx: PassContext, max_growth: int, root: gs.Graph) -> Counter:
    """Evaluate every node whose inputs are all constant and replace what leaves the constant
    region by its value. Returns counts: nodes_folded, skipped_by_size_guard, evaluator_runs."""
    counts: Counter = Counter()
    candidates = _candidates(graph)
    if not candidates:
        return counts
    evaluator = Evaluator(ctx, root)
    results = evaluator.evaluate(candidates)
    counts["evaluator_runs"] += evaluator.runs
    # nodes that produced all their (named) outputs
    done = [n for n in candidates if all(is_empty(o) or o.name in results for o in n.outputs)]
    if not done:
        return counts
    keep, to_materialize, size_kept = _materialization_plan(graph, done, results, max_growth, ctx)
    counts["skipped_by_size_guard"] += size_kept
    removed = [n for n in done if id(n) not in keep]
    if not removed:
        return counts
    for t in to_materialize:
        materialize(graph, t, results[t.name], ctx)
    removed_ids = {id(n) for n in removed}
    for n in removed:
        n.inputs.clear()
        n.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) not in removed_ids]
    counts["nodes_folded"] += len(removed)
    return counts


def _foldable_op(node: gs.Node) -> bool:
    if (node.domain or "") not in EVALUATED_DOMAINS or node.op in NOT_FOLDABLE:
        return False
    for sub in subgraphs_of(node):
        if any(not _foldable_op(inner) for inner in sub.nodes):
            return False
    return True


def _candidates(graph: gs.Graph) -> list[gs.Node]:
    """Nodes (in order) whose inputs are constants or outputs of other candidates."""
    constant_valued: set[int] = set()
    out = []
    for node in graph.nodes:
        if not _foldable_op(node):
            continue
        if not all(is_empty(t) or isinstance(t, gs.Constant) or id(t) in constant_valued for t in node.inputs):
            continue
        subs = subgraphs_of(node)
        if any(not (isinstance(t, gs.Constant) or id(t) in constant_valued) for s in subs for t in outer_inputs(s)):
            continue
        out.append(node)
        constant_valued.update(id(t) for t in node.outputs if not is_empty(t))
    # a batch made only of Constant nodes changes nothing
    if all(n.op == "Constant" for n in out):
        return []
    return out


def _materialization_plan(graph, done, results, max_growth, ctx):
    """Which folded nodes must stay (size guard, values we cannot hold) and which of their
    outputs become constants. Returns (kept node ids, tensors to materialize, kept-by-size count)."""
    done_ids = {id(n) for n in done}
    producer = {id(o): n for n in done for o in n.outputs}
    graph_outputs = {id(t) for t in graph.outputs}
    keep: set[int] = {id(n) for n in done if n.op == "Constant"}  # already as small as it gets

    def consumers_outside(t) -> bool:
        if id(t) in graph_outputs:
            return True
        # gs lists readers inside subgraphs among a tensor's consumers, too
        return any(id(c) not in done_ids or id(c) in keep for c in t.outputs)

    leaf_bytes = _LeafBytes(producer)
    size_kept = 0
    changed = True
    chosen: dict[int, gs.Tensor] = {}
    while changed:
        changed = False
        chosen = {}
        for n in done:
            if id(n) in keep:
                continue
            for t in n.outputs:
                if is_empty(t) or not consumers_outside(t):
                    continue
                value = results[t.name]
                holdable = value.proto is not None and (
                    not needs_constant_node(graph, t, ctx) or constant_node_allows(value.proto.data_type, ctx))
                if not holdable or value.nbytes - leaf_bytes.of(t) > max_growth:
                    if holdable:
                        size_kept += 1
                    keep.add(id(n))
                    changed = True
                    break
                chosen[id(t)] = t
            if changed:
                break
    return keep, list(chosen.values()), size_kept


class _LeafBytes:
    """Bytes of the distinct original constants a folded tensor is computed from."""

    def __init__(self, producer: dict[int, gs.Node]):
        self.producer = producer

    def of(self, t: gs.Tensor) -> int:
        seen: set[int] = set()
        total = 0
        stack = [t]
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            if isinstance(x, gs.Constant):
                total += constant_nbytes(x)
                continue
            node = self.producer.get(id(x))
            if node is not None:
                stack.extend(node.inputs)
                for sub in subgraphs_of(node):
                    stack.extend(outer_inputs(sub))
        return total


def needs_constant_node(graph: gs.Graph, t: gs.Tensor, ctx: PassContext) -> bool:
    """Graph outputs keep their producer's name; IR < 4 wants every initializer as an input."""
    return any(t is o for o in graph.outputs) or ctx.ir_version < 4


def constant_node_allows(elem_type: int, ctx: PassContext) -> bool:
    """Can this model's opset hold a value of ``elem_type`` in a Constant node?"""
    if "" not in ctx.opsets and "ai.onnx" not in ctx.opsets:
        return False
    try:
        schema = onnx.defs.get_schema("Constant", max(ctx.opset, 1), "")
    except Exception:  # noqa: BLE001
        return False
    wanted = f"tensor({onnx.helper.tensor_dtype_to_string(elem_type).removeprefix('TensorProto.').lower()})"
    return any(wanted in c.allowed_type_strs for c in schema.type_constraints)


def materialize(graph: gs.Graph, t: gs.Variable, value: Value, ctx: PassContext) -> None:
    proto = value.proto
    if needs_constant_node(graph, t, ctx):
        # an output keeps its name and its declared type: produce it with a Constant node
        attr = gs.Constant(t.name + "__value", LazyValues(named(proto, "")))
        node = gs.Node("Constant", name=t.name + "__folded", attrs={"value": attr})
        graph.nodes.append(node)
        node.outputs.append(t)
        return
    t.to_constant(LazyValues(named(proto, t.name)))
