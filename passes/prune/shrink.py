"""Cut removed channel groups out of a graph: producer rows, per-channel parameters, consumer
columns (folding constant channels into biases first, or into a border term where padding
meets them), sizes in attributes, and the recorded
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
        self.border_terms: list[tuple[gs.Node, np.ndarray]] = []
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

    def proven_values(self, t: gs.Tensor) -> np.ndarray:
        """Per position, the constant the analysis proved ``t`` holds (0 where none)."""
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


    def add_border_term(self, conv: gs.Node, weight: np.ndarray, spatial: tuple[int, ...] | None) -> None:
        """Add ``Conv(ones, weight)`` (same padding, strides, dilations) to ``conv``'s output: what
        the removed constant input channels contributed, zero padding included. ``spatial``: the
        input's fixed spatial dims, if known. Built once every rule has shrunk (a
        BatchNormalization after the conv must be cut first)."""
        self.border_terms.append((conv, weight, spatial))

    def build_border_terms(self) -> None:
        for conv, weight, spatial in self.border_terms:
            target, weight = self._border_target(conv, weight)
            ones = self._ones_like_one_channel(conv.inputs[0], weight.ndim, weight.dtype, spatial)
            attrs = {k: v for k, v in conv.attrs.items() if k in ("auto_pad", "dilations", "kernel_shape", "pads", "strides")}
            term = self._op("Conv", [ones, self._constant("border_weight", weight)], weight.dtype, "border", **attrs)
            y = target.outputs[0]
            mid = gs.Variable(self.unique(f"{y.name}_noborder"), dtype=y.dtype)
            target.outputs[0] = mid
            add = gs.Node("Add", name=self.unique(f"{target.name or target.op}_border"), inputs=[mid, term], outputs=[y])
            self.graph.nodes.append(add)
            self.inserted.append(add)

    def _ones_like_one_channel(self, x: gs.Tensor, rank: int, dtype, spatial: tuple[int, ...] | None) -> gs.Tensor:
        """A map of ones shaped like one channel of ``x``. When the size is fixed, from a constant
        shape: ORT then folds the whole border term at load, and no Shape node makes it copy ``x``
        out of its blocked layout (measured 7% of ResNet-50 time); else from ``Shape(x)``."""
        if spatial is not None:
            one_channel = self._constant("border_shape", np.array((1, 1) + tuple(spatial), np.int64))
        else:
            shape = self._op("Shape", [x], np.int64, "shape")
            keep = self._constant("border_keep", np.array([1, 0] + [1] * (rank - 2), np.int64))
            unit = self._constant("border_unit", np.array([0, 1] + [0] * (rank - 2), np.int64))
            one_channel = self._op("Add", [self._op("Mul", [shape, keep], np.int64, "shape"), unit], np.int64, "shape")
        return self._op("ConstantOfShape", [one_channel], dtype, "ones",
                        value=gs.Constant(self.unique("border_one"), np.ones(1, dtype=dtype)))

    def _border_target(self, conv: gs.Node, weight: np.ndarray) -> tuple[gs.Node, np.ndarray]:
        """Add the term after an inference BatchNormalization that is the conv's only consumer
        (scaled by it), so Conv+BatchNormalization still fuse; else right after the conv."""
        y = conv.outputs[0]
        if len(y.outputs) != 1 or any(y is o for o in self.graph.outputs):
            return conv, weight
        bn = y.outputs[0]
        if (bn.op != "BatchNormalization" or (bn.domain or "") not in ("", "ai.onnx") or len(bn.outputs) != 1
                or int(bn.attrs.get("training_mode", 0)) or bn.inputs[0] is not y):
            return conv, weight
        scale, var = const_array(bn.inputs[1]), const_array(bn.inputs[4])
        if scale is None or var is None or scale.shape != (weight.shape[0],) or var.shape != scale.shape:
            return conv, weight
        factor = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(bn.attrs.get("epsilon", 1e-5)))
        return bn, (weight.astype(np.float64) * factor.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype)

    def _op(self, op: str, inputs: list[gs.Tensor], dtype, base: str, **attrs) -> gs.Variable:
        out = gs.Variable(self.unique(f"border_{base}"), dtype=dtype)
        self.graph.nodes.append(gs.Node(op, name=self.unique(f"border_{op}"), attrs=attrs, inputs=inputs, outputs=[out]))
        return out


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
    sh.build_border_terms()
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
    if sh.inserted or sh.border_terms:
        analysis.graph.toposort(recurse_subgraphs=False)
    return masks
