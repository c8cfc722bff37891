"""Pattern rewriting: rules, the only sanctioned way to mutate (``Rewriter``), and a greedy
worklist driver that applies rules to a fixed point (MLIR's greedy pattern rewrite driver).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from .pass_base import PassContext


# ---------------------------------------------------------------------------------------------
# graph edit primitives shared by rules and passes


def subgraphs_of(node: gs.Node) -> list[gs.Graph]:
    return [v for v in node.attrs.values() if isinstance(v, gs.Graph)]


def outer_inputs(graph: gs.Graph) -> list[gs.Tensor]:
    """Tensors a (sub)graph reads but does not define: its implicit inputs from outer scopes.

    Constants are values: gs exports each one into every graph that reads it, so they never
    need an outer-scope definition to stay alive. (gs tensors are unhashable: key by id.)
    """
    defined = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        defined.update(id(t) for t in node.outputs)
    used: dict[int, gs.Tensor] = {}
    for node in graph.nodes:
        for t in node.inputs:
            if not _is_empty(t):
                used[id(t)] = t
        for sub in subgraphs_of(node):
            used.update((id(t), t) for t in outer_inputs(sub))
    used.update((id(t), t) for t in graph.outputs)
    return [t for k, t in used.items() if k not in defined and not isinstance(t, gs.Constant)]


def _is_empty(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and t.name == ""


def is_graph_io(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.inputs) or any(t is tensor for t in graph.outputs)


def replace_all_uses(old: gs.Tensor, new: gs.Tensor) -> int:
    """Point every consumer of ``old`` (subgraph nodes included) at ``new``. Graph outputs untouched."""
    count = 0
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
                count += 1
    return count


def detach(node: gs.Node) -> None:
    """Disconnect a node (and its subgraphs' nodes) so removed nodes stop counting as consumers."""
    for sub in subgraphs_of(node):
        for inner in sub.nodes:
            detach(inner)
    node.inputs.clear()
    node.outputs.clear()


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer, or None if the tensor is not a constant we can read."""
    if isinstance(tensor, gs.Constant):
        try:
            from .ir import read_values

            return read_values(tensor)
        except Exception:  # noqa: BLE001 - exotic dtypes numpy can't hold
            return None
    return None


class FreshNames:
    """Names that collide with nothing already taken (call it with a base name)."""

    def __init__(self, taken: set[str]):
        self.taken = taken

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


# ---------------------------------------------------------------------------------------------
# rules and the driver


@dataclass(frozen=True)
class RewriteRule:
    """``match(node, ctx)`` returns a match object (truthy) and never mutates;
    ``rewrite(rewriter, node, match)`` performs the change through ``rewriter``."""

    name: str
    root_op: str
    match: Callable[[gs.Node, PassContext], Any]
    rewrite: Callable[["Rewriter", gs.Node, Any], None]
    benefit: int = 1
    opsets: tuple[int, int] = (1, 10_000)
    domain: str = ""

    def applies_to(self, node: gs.Node, ctx: PassContext) -> bool:
        if node.op != self.root_op or (node.domain or "") not in (self.domain, "ai.onnx" if not self.domain else self.domain):
            return False
        lo, hi = self.opsets
        return lo <= (ctx.opset or lo) <= hi


class Rewriter:
    """Mutations on one graph, recorded so the driver knows what to revisit."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.removed: set[int] = set()
        self.touched: list[gs.Node] = []
        self.added: list[gs.Node] = []
        self._fresh: FreshNames | None = None

    def _touch_users(self, tensor: gs.Tensor) -> None:
        self.touched.extend(tensor.outputs)
        self.touched.extend(tensor.inputs)

    def replace_all_uses(self, old: gs.Tensor, new: gs.Tensor) -> None:
        self.touched.extend(old.outputs)
        replace_all_uses(old, new)
        self._touch_users(new)

    def remove_node(self, node: gs.Node) -> None:
        for t in list(node.inputs):
            self.touched.extend(t.inputs)
        self.removed.add(id(node))
        detach(node)

    def add_node(self, op: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor],
                 attrs: dict | None = None, name: str = "", domain: str | None = None) -> gs.Node:
        node = gs.Node(op=op, name=name, attrs=attrs or {}, inputs=list(inputs), outputs=list(outputs),
                       domain=domain)
        self.graph.nodes.append(node)
        self.added.append(node)
        self.touched.append(node)
        return node

    def constant(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.unique_name(name), np.asarray(values))

    def variable(self, name: str, dtype=None, shape=None) -> gs.Variable:
        return gs.Variable(self.unique_name(name), dtype=dtype, shape=shape)

    def unique_name(self, base: str) -> str:
        if self._fresh is None:
            self._fresh = FreshNames(set(self.graph.tensors()))
        return self._fresh(base)

    def finish(self) -> None:
        if self.removed:
            self.graph.nodes = [n for n in self.graph.nodes if id(n) not in self.removed]
            self.removed.clear()


def apply_rules(graph: gs.Graph, rules: list[RewriteRule], ctx: PassContext, *,
                max_rewrites: int = 1_000_000, recurse: bool = True, verify_fixpoint: bool = False) -> Counter:
    """Apply rules greedily until none matches; returns how often each rule fired.

    With ``verify_fixpoint`` a final sweep must find nothing more (a test of the rules' logic).
    """
    counts: Counter = Counter()
    by_op: dict[str, list[RewriteRule]] = {}
    for rule in sorted(rules, key=lambda r: -r.benefit):
        by_op.setdefault(rule.root_op, []).append(rule)
    _drive(graph, by_op, ctx, counts, max_rewrites, recurse)
    if verify_fixpoint:
        again: Counter = Counter()
        _drive(graph, by_op, ctx, again, max_rewrites, recurse)
        if again:
            raise AssertionError(f"rewrite did not reach a fixed point: {dict(again)}")
    return counts


def _drive(graph, by_op, ctx, counts, max_rewrites, recurse) -> None:
    rewriter = Rewriter(graph)
    worklist = list(reversed(graph.nodes))
    queued = {id(n) for n in worklist}
    fired = 0
    while worklist:
        node = worklist.pop()
        queued.discard(id(node))
        if id(node) in rewriter.removed:
            continue
        for rule in by_op.get(node.op, ()):
            if not rule.applies_to(node, ctx):
                continue
            m = rule.match(node, ctx)
            if not m:
                continue
            rule.rewrite(rewriter, node, m)
            counts[rule.name] += 1
            fired += 1
            if fired >= max_rewrites:
                worklist.clear()
            for touched in rewriter.touched:
                if id(touched) not in queued and id(touched) not in rewriter.removed:
                    worklist.append(touched)
                    queued.add(id(touched))
            rewriter.touched.clear()
            break
    rewriter.finish()
    if rewriter.added:
        graph.toposort(recurse_subgraphs=False)
    if recurse:
        for node in graph.nodes:
            for sub in subgraphs_of(node):
                _drive(sub, by_op, ctx, counts, max_rewrites, recurse)
