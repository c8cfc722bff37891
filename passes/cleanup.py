"""cleanup: remove what inference never needs, without changing a single output value.

Constant nodes become initializers, Identity and inference-mode Dropout disappear, duplicate
initializers and common subexpressions merge, and dead nodes go. Graph inputs and outputs (and
their names) are never touched. Recurses into If/Loop/Scan bodies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.pass_base import Numerics, Pass, PassContext, PassResult
from onnxopt.registry import register_pass
from onnxopt.rewrite import detach, is_graph_io, outer_inputs, replace_all_uses, subgraphs_of

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "Dropout"}


@register_pass
class Cleanup(Pass):
    """Dead code, identities, Constant lifting, duplicate initializers and common subexpressions."""

    name = "cleanup"
    numerics = Numerics.EXACT

    @dataclass(frozen=True)
    class Options:
        lift_constants: bool = field(default=True, metadata={"help": "turn Constant nodes into initializers"})
        cse: bool = field(default=True, metadata={"help": "merge identical nodes and initializers"})
        max_iters: int = field(default=8, metadata={"help": "sweeps before giving up on a fixed point"})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter = Counter()
        for _ in range(self.options.max_iters):
            before = sum(stats.values())
            self._sweep(graph, ctx, stats, outer_names=set())
            if sum(stats.values()) == before:
                break
        return PassResult(changed=sum(stats.values()) > 0, stats=dict(stats))

    def _sweep(self, graph: gs.Graph, ctx: PassContext, stats: Counter, outer_names: set[str]) -> None:
        # IR < 4 requires every initializer to be a graph input: lifting would change the signature.
        if self.options.lift_constants and ctx.ir_version >= 4:
            stats["constants_lifted"] += lift_constants(graph)
        if self.options.cse:
            stats["initializers_merged"] += merge_duplicate_constants(graph)
        stats["identities_removed"] += remove_passthrough(graph, ctx)
        if self.options.cse:
            stats["subexpressions_merged"] += eliminate_common_subexpressions(graph)
        stats["dead_nodes_removed"] += remove_dead_nodes(graph)
        for node in graph.nodes:
            for sub in subgraphs_of(node):
                self._sweep(sub, ctx, stats, outer_names)
        for key in [k for k, v in stats.items() if v == 0]:
            del stats[key]


# ---------------------------------------------------------------------------------------------
# Constant nodes -> initializers

_SCALAR_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64,
}


def _constant_node_value(node: gs.Node):
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        return attrs["value"]._values
    for key, dtype in _SCALAR_ATTRS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key in ("value_string", "value_strings"):
        if key in attrs:
            value = attrs[key]
            items = value if isinstance(value, list) else [value]
            items = [v.decode() if isinstance(v, bytes) else v for v in items]
            arr = np.array(items, dtype=object)
            return arr if isinstance(value, list) else arr.reshape(())
    return None  # sparse_value and anything unknown stay as nodes


def lift_constants(graph: gs.Graph) -> int:
    lifted = 0
    keep = []
    for node in graph.nodes:
        if node.op == "Constant" and (node.domain or "") in ("", "ai.onnx") and len(node.outputs) == 1:
            out = node.outputs[0]
            value = _constant_node_value(node)
            if value is not None and isinstance(out, gs.Variable) and not is_graph_io(graph, out):
                node.outputs.clear()
                out.to_constant(value)
                lifted += 1
                continue
        keep.append(node)
    if lifted:
        graph.nodes = keep
    return lifted


# ---------------------------------------------------------------------------------------------
# duplicate initializers


def merge_duplicate_constants(graph: gs.Graph) -> int:
    """Point every reader of a constant at the first constant with the same dtype, shape, bytes.

    Only constants whose dtype and shape collide are hashed, so big unique weights are not read.
    """
    by_shape: dict[tuple, list[gs.Constant]] = {}
    seen: set[int] = set()
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and id(t) not in seen and not is_graph_io(graph, t):
                seen.add(id(t))
                by_shape.setdefault((str(t.dtype), tuple(t.shape)), []).append(t)
    merged = 0
    for group in by_shape.values():
        if len(group) < 2:
            continue
        first: dict[str, gs.Constant] = {}
        for t in group:
            keeper = first.setdefault(ir.constant_digest(t), t)
            if keeper is not t:
                replace_all_uses(t, keeper)
                merged += 1
    return merged


# ---------------------------------------------------------------------------------------------
# Identity / inference Dropout


def _is_false_constant(t: gs.Tensor) -> bool:
    if isinstance(t, gs.Variable) and t.name == "":
        return True
    if isinstance(t, gs.Constant):
        try:
            return not bool(ir.read_values(t).reshape(-1)[0])
        except Exception:  # noqa: BLE001
            return False
    return False


def _passthrough_source(node: gs.Node, graph: gs.Graph, ctx: PassContext) -> gs.Tensor | None:
    """The input a node merely forwards to its first output, or None."""
    if (node.domain or "") not in ("", "ai.onnx") or not node.inputs or not node.outputs:
        return None
    if node.op == "Identity":
        return node.inputs[0]
    if node.op == "Dropout":
        if ctx.opset < 7 and not node.attrs.get("is_test", 0):
            return None  # opset < 7 Dropout drops at inference unless is_test is set
        if len(node.inputs) > 2 and not _is_false_constant(node.inputs[2]):
            return None  # training_mode may be true at run time
        if len(node.outputs) > 1 and node.outputs[1].name and (node.outputs[1].outputs or is_graph_io(graph, node.outputs[1])):
            return None  # the mask is used
        return node.inputs[0]
    return None


def remove_passthrough(graph: gs.Graph, ctx: PassContext) -> int:
    removed = 0
    drop = set()
    local_outputs = {id(t) for n in graph.nodes for t in n.outputs}
    for node in graph.nodes:
        src = _passthrough_source(node, graph, ctx)
        if src is None:
            continue
        out = node.outputs[0]
        if not any(o is out for o in graph.outputs):
            detach(node)
            replace_all_uses(out, src)
            drop.add(id(node))
            removed += 1
            continue
        # out is a graph output: rename the producer's output instead, if that is legal.
        producer = src.inputs[0] if len(src.inputs) == 1 else None
        if (producer is None or id(src) not in local_outputs or is_graph_io(graph, src)
                or isinstance(src, gs.Constant)):
            continue
        detach(node)
        replace_all_uses(src, out)
        slot = next(i for i, t in enumerate(producer.outputs) if t is src)
        producer.outputs[slot] = out
        out.dtype, out.shape = out.dtype or src.dtype, out.shape or src.shape
        drop.add(id(node))
        removed += 1
    if drop:
        graph.nodes = [n for n in graph.nodes if id(n) not in drop]
    return removed


# ---------------------------------------------------------------------------------------------
# common subexpressions


def _attr_key(value):
    if isinstance(value, gs.Constant):
        return ("T", ir.constant_digest(value))
    if isinstance(value, np.ndarray):
        return ("A", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return ("L",) + tuple(_attr_key(v) for v in value)
    if isinstance(value, float) and value != value:
        return ("nan",)
    return (type(value).__name__, value)


def _node_key(node: gs.Node):
    if node.op in NONDETERMINISTIC or (node.domain or "") not in STANDARD_DOMAINS or subgraphs_of(node):
        return None
    try:
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
        hash(attrs)
    except TypeError:
        return None
    inputs = tuple(id(t) if not (isinstance(t, gs.Variable) and t.name == "") else None for t in node.inputs)
    outputs = tuple(bool(t.name) for t in node.outputs)
    return (node.op, node.domain or "", inputs, attrs, outputs)


def eliminate_common_subexpressions(graph: gs.Graph) -> int:
    """Merge nodes computing the same op on the same inputs; visits in topological order so
    chains of duplicates collapse in one sweep."""
    graph.toposort(recurse_subgraphs=False)
    seen: dict = {}
    merged = 0
    drop = set()
    for node in graph.nodes:
        key = _node_key(node)
        if key is None:
            continue
        keeper = seen.setdefault(key, node)
        if keeper is node or any(is_graph_io(graph, t) for t in node.outputs):
            continue
        for dup, kept in zip(list(node.outputs), keeper.outputs):
            if dup.name:
                replace_all_uses(dup, kept)
        detach(node)
        drop.add(id(node))
        merged += 1
    if drop:
        graph.nodes = [n for n in graph.nodes if id(n) not in drop]
    return merged


# ---------------------------------------------------------------------------------------------
# dead code


def remove_dead_nodes(graph: gs.Graph) -> int:
    """Keep only nodes that (transitively) feed a graph output; subgraph reads keep outer values."""
    producer = {id(t): n for n in graph.nodes for t in n.outputs}
    live: set[int] = set()
    stack = [t for t in graph.outputs]
    while stack:
        t = stack.pop()
        node = producer.get(id(t))
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(node.inputs)
        for sub in subgraphs_of(node):
            stack.extend(outer_inputs(sub))
    dead = [n for n in graph.nodes if id(n) not in live]
    for node in dead:
        detach(node)
    if dead:
        graph.nodes = [n for n in graph.nodes if id(n) in live]
    return len(dead)
