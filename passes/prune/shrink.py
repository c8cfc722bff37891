"""Cut removed channel groups out of a graph: producer rows, per-channel parameters, consumer
columns (folding constant channels into biases first), sizes in attributes, and the recorded
shapes of every tensor that shrinks (stale shapes exported as value_info make ORT reject a model).

Weights may be read-only memory maps: every change builds a new array and a new Constant.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.rewrite import FreshNames

from .channels import ChannelAnalysis, const_array


class Shrinker:
    """The edit primitives rules use in ``shrink``; knows the keep mask of every tracked tensor."""

    def __init__(self, analysis: ChannelAnalysis, masks: dict[int, np.ndarray], opset: int,
                 fold_override: dict[int, np.ndarray] | None = None, taken: set[str] | None = None):
        self.analysis = analysis
        self.graph = analysis.graph
        self.masks = masks
        self.opset = opset
        self.fold_override = fold_override or {}
        self.inserted: list[gs.Node] = []
        self.orphaned: list[gs.Node] = []
        # names in use in every scope (a new constant must not shadow an outer name)
        self._fresh = FreshNames(taken if taken is not None else set(self.graph.tensors().keys()))

    # -- queries -------------------------------------------------------------------------------

    def keep(self, t: gs.Tensor) -> np.ndarray | None:
        return self.masks.get(id(t))

    @staticmethod
    def const(t: gs.Tensor) -> np.ndarray:
        value = const_array(t)
        if value is None:
            raise ValueError(f"'{t.name}' is not a constant")
        return value

    def fold_values(self, t: gs.Tensor) -> np.ndarray:
        """Per position, what the exit should add in place of the channel (0 where nothing)."""
        values = self.fold_override.get(id(t))
        if values is None:
            values = self.analysis.tracks[id(t)].values
        return np.where(np.isfinite(values), values, 0.0)

    # -- edits ---------------------------------------------------------------------------------

    def unique(self, base: str) -> str:
        return self._fresh(base)

    def _constant(self, base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.unique(f"{base or 'const'}_pruned"), np.ascontiguousarray(values))

    def set_input(self, node: gs.Node, slot: int, values: np.ndarray) -> None:
        old = node.inputs[slot]
        producer = old.inputs[0] if isinstance(old, gs.Variable) and old.inputs else None
        node.inputs[slot] = self._constant(old.name, np.asarray(values))
        if producer is not None and producer.op == "Constant" and not old.outputs:
            self.orphaned.append(producer)

    def add_input(self, node: gs.Node, slot: int, values: np.ndarray, base: str) -> None:
        while len(node.inputs) < slot:
            node.inputs.append(gs.Variable.empty())
        const = self._constant(f"{node.name or node.op}_{base}", np.asarray(values))
        if len(node.inputs) == slot:
            node.inputs.append(const)
        else:
            node.inputs[slot] = const

    @staticmethod
    def set_attr(node: gs.Node, name: str, value) -> None:
        node.attrs[name] = value

    def add_bias_after(self, node: gs.Node, bias: np.ndarray) -> None:
        """``y = node(...)`` becomes ``y = Add(node(...), bias)`` (MatMul has no bias of its own)."""
        y = node.outputs[0]
        mid = gs.Variable(self.unique(f"{y.name}_nobias"), dtype=y.dtype)
        node.outputs[0] = mid
        add = gs.Node("Add", name=self.unique(f"{node.name or 'MatMul'}_folded_bias"),
                      inputs=[mid, self._constant(f"{y.name}_bias", bias)], outputs=[y])
        self.graph.nodes.append(add)
        self.inserted.append(add)


def all_names(graph: gs.Graph) -> set[str]:
    """Every tensor name of a graph and its subgraphs."""
    from onnxopt import ir

    return {name for g in ir.iter_graphs(graph) for name in g.tensors().keys()}


def apply(analysis: ChannelAnalysis, removed: set[int], opset: int,
          fold_override: dict[int, np.ndarray] | None = None, taken: set[str] | None = None) -> dict[int, np.ndarray]:
    """Remove the groups ``removed`` from ``analysis.graph``; returns the keep masks used.

    ``taken``: names already used anywhere in the model (updated with the new ones)."""
    masks = analysis.keep_masks(removed)
    if not masks:
        return masks
    sh = Shrinker(analysis, masks, opset, fold_override, taken)
    for node in list(analysis.graph.nodes):
        entry = analysis.plans.get(id(node))
        if entry is None:
            continue
        if any(id(t) in masks for t in list(node.inputs) + list(node.outputs)):
            rule, plan = entry
            rule.shrink(node, plan, sh)
    for tid, mask in masks.items():
        t = analysis.tensors[tid]
        track = analysis.tracks[tid]
        if isinstance(t, gs.Variable) and t.shape is not None and len(t.shape) == track.rank:
            shape = list(t.shape)
            shape[track.axis] = int(mask.sum())
            t.shape = shape
    for node in sh.inserted:
        y = node.outputs[0]
        node.inputs[0].shape = list(y.shape) if y.shape is not None else None
    dead = {id(n) for n in sh.orphaned if not any(o.outputs for o in n.outputs)
            and not any(o is g for o in n.outputs for g in analysis.graph.outputs)}
    if dead:
        for n in sh.orphaned:
            if id(n) in dead:
                n.outputs.clear()
        analysis.graph.nodes = [n for n in analysis.graph.nodes if id(n) not in dead]
    if sh.inserted:
        analysis.graph.toposort(recurse_subgraphs=False)
    return masks
