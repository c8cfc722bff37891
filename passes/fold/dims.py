"""Symbolic dimensions: which unknown sizes in a graph are provably the same size.

onnx's shape inference names a dynamic dimension only where it can carry a ``dim_param``
through; after a Reshape built from a Shape chain, or a Conv, it usually gives up. This
analysis gives every unknown dimension a symbol and carries the symbols through the ops that
provably keep them (elementwise and broadcasting ops, MatMul, Transpose, constant Reshape,
Squeeze/Unsqueeze, Concat, Gather, reductions, the batch axis of Conv/Pool), merging them with
inference's ``dim_param`` names (union-find). Two dimensions with the same representative
are equal for every input the model accepts; nothing else is assumed, so a symbol is never
frozen to a number.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

Dim = "int | Sym"

_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/\-]*$")

UNARY = {
    "Abs", "Acos", "Asin", "Atan", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos",
    "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
    "LpNormalization", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin",
    "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "QuickGelu", "PRelu",
}
BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Xor", "Where", "Mod", "BitShift",
}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
SPATIAL = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
           "Resize", "Upsample"}


class Sym:
    """An unknown size; equal syms share a representative (``Dims.find``)."""

    __slots__ = ("parent", "label")

    def __init__(self, label: str):
        self.parent: Sym | None = None
        self.label = label

    def __repr__(self) -> str:
        return f"<{self.label}>"


class Dims:
    """Symbolic shapes of the tensors of one graph, computed once in node order."""

    def __init__(self, graph: gs.Graph):
        from .shape_values import ShapeValues  # the two analyses feed each other

        self._params: dict[str, Sym] = {}
        self._memo: dict[int, list | None] = {}
        self.values = ShapeValues(self)  # shape vectors, element by element
        for t in graph.inputs:
            self._memo[id(t)] = self._from_declared(t)
        for node in graph.nodes:
            self._visit(node)

    # ----------------------------------------------------------------------------- union-find

    def find(self, d):
        if not isinstance(d, Sym):
            return d
        root = d
        while root.parent is not None:
            root = root.parent
        while d.parent is not None and d.parent is not root:
            d.parent, d = root, d.parent
        return root

    def same(self, a, b) -> bool:
        return self.find(a) is self.find(b) if isinstance(a, Sym) and isinstance(b, Sym) else (
            not isinstance(a, Sym) and not isinstance(b, Sym) and a == b)

    def _union(self, a: Sym, b: Sym) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            ra.parent = rb

    def _param(self, name) -> Sym | None:
        if not isinstance(name, str) or not _PARAM.match(name):
            return None  # "?" and friends name nothing
        sym = self._params.get(name)
        if sym is None:
            sym = self._params[name] = Sym(name)
        return sym

    # ----------------------------------------------------------------------------- lookups

    def of(self, t: gs.Tensor) -> list | None:
        """Dims of ``t`` (ints and Syms), or None when even the rank is unknown."""
        key = id(t)
        if key not in self._memo:
            self._memo[key] = self._from_declared(t)
        dims = self._memo[key]
        return None if dims is None else [self.find(d) for d in dims]

    def _from_declared(self, t: gs.Tensor) -> list | None:
        if isinstance(t, gs.Constant):
            return [int(d) for d in t.shape]
        shape = t.shape
        if shape is None:
            return None
        out = []
        for axis, d in enumerate(shape):
            if isinstance(d, (int, np.integer)) and d >= 0:
                out.append(int(d))
            else:
                out.append(self._param(d) or Sym(f"{t.name}:{axis}"))
        return out

    def _merge(self, t: gs.Tensor, derived: list | None) -> list | None:
        declared = self._from_declared(t)
        if derived is None:
            return declared
        if declared is None:
            return derived
        if len(declared) != len(derived):
            return declared
        out = []
        for a, b in zip(derived, declared):
            if isinstance(b, int):
                out.append(b)
            elif isinstance(a, int):
                out.append(a)
            else:
                if b.label in self._params and self._params[b.label] is b:
                    self._union(a, b)
                out.append(a)
        return out

    def _visit(self, node: gs.Node) -> None:
        try:
            derived = self._derive(node)
        except Exception:  # noqa: BLE001 - malformed attributes: know nothing
            derived = None
        for i, t in enumerate(node.outputs):
            d = derived[i] if derived is not None and i < len(derived) else None
            self._memo[id(t)] = self._merge(t, d)

    # ----------------------------------------------------------------------------- rules

    def _derive(self, node: gs.Node) -> list | None:
        """Per-output dims from the op's semantics, or None."""
        if (node.domain or "") not in ("", "ai.onnx") or not node.inputs:
            return None
        op = node.op
        if op == "ConstantOfShape":
            return [self._entries(node.inputs[0])]
        if op == "Range":
            return [self._range(node)]
        ins = [self.of(t) if t.name or isinstance(t, gs.Constant) else None for t in node.inputs]
        x = ins[0]
        if op in UNARY:
            return [x]
        if op in BROADCAST:
            return [self._broadcast([d for d, t in zip(ins, node.inputs) if t.name or isinstance(t, gs.Constant)])]
        if x is None:
            return None
        if op == "MatMul":
            return [self._matmul(x, ins[1])]
        if op == "Transpose":
            perm = node.attrs.get("perm") or list(reversed(range(len(x))))
            return [[x[int(p)] for p in perm]]
        if op == "Reshape":
            return [self._reshape(node, x)]
        if op == "Expand":
            target = self._entries(node.inputs[1])
            return None if target is None else [self._broadcast([x, target])]
        if op in ("Squeeze", "Unsqueeze"):
            return [self._squeeze(node, x)]
        if op == "Concat":
            return [self._concat(node, ins)]
        if op == "Gather":
            return [self._gather(node, x, ins[1])]
        if op in REDUCE:
            return [self._reduce(node, x)]
        if op in SPATIAL:
            return [self._spatial(node, x, ins)]
        if op == "Split":
            axis = int(node.attrs.get("axis", 0)) % len(x)
            return [[d if i != axis else Sym(f"{t.name}:{axis}") for i, d in enumerate(x)] for t in node.outputs]
        if op == "Slice":
            return [self._slice(node, x)]
        return None

    def _broadcast(self, shapes: list) -> list | None:
        if any(s is None for s in shapes) or not shapes:
            return None
        r = max(len(s) for s in shapes)
        out = []
        for axis in range(r):
            picked = None
            for s in shapes:
                i = axis - (r - len(s))
                if i < 0:
                    continue
                d = s[i]
                if picked is None or picked == 1:
                    picked = d
                elif d == 1 or self.same(picked, d):
                    continue
                elif isinstance(d, int) and isinstance(picked, Sym):
                    picked = d  # the symbol must be d (or 1) for the model to run
                elif isinstance(picked, int) and isinstance(d, Sym):
                    continue
                else:
                    picked = Sym("bcast")  # two symbols: either may be 1
            out.append(picked)
        return out

    def _matmul(self, a: list, b: list | None) -> list | None:
        if b is None or len(a) < 2 or len(b) < 2:
            return None
        batch = self._broadcast([a[:-2], b[:-2]])
        return None if batch is None else batch + [a[-2], b[-1]]

    def _entries(self, t: gs.Tensor) -> list | None:
        """A shape vector's elements (ints and Syms), from the shape-value analysis."""
        v = self.values.get(t)
        if v is None or v.scalar or any(isinstance(e, bool) for e in v.entries):
            return None
        return [self.find(e) for e in v.entries]

    def _range(self, node: gs.Node) -> list | None:
        """Range(0, n, 1) has n elements."""
        start, limit, delta = (self.values.get(t) for t in node.inputs[:3])
        if start is None or delta is None or limit is None or not (start.scalar and limit.scalar and delta.scalar):
            return None
        if start.entries != [0] or delta.entries != [1]:
            return None
        n = limit.entries[0]
        return [max(n, 0) if isinstance(n, int) else self.find(n)]

    def _reshape(self, node: gs.Node, x: list) -> list | None:
        shape = node.inputs[1] if len(node.inputs) > 1 else None
        if shape is None:
            return None
        target = self._entries(shape)
        if target is None:
            return None
        allowzero = int(node.attrs.get("allowzero", 0))
        out: list = []
        for i, v in enumerate(target):
            if isinstance(v, Sym):
                out.append(v)
            elif v == 0 and not allowzero:
                if i >= len(x):
                    return None
                out.append(x[i])
            else:
                out.append(v)
        if -1 in out:
            k = out.index(-1)
            q = self._quotient(x, out[:k] + out[k + 1:])
            out[k] = q if q is not None else Sym(f"{node.outputs[0].name}:{k}")
        return out

    def _quotient(self, num: list, den: list):
        """prod(num) / prod(den) when the symbols cancel (or one is left over), else None."""
        syms: Counter = Counter()
        n_int, d_int = 1, 1
        reps: dict[int, Sym] = {}
        for d in num:
            if isinstance(d, Sym):
                r = self.find(d)
                reps[id(r)] = r
                syms[id(r)] += 1
            else:
                n_int *= d
        for d in den:
            if isinstance(d, Sym):
                r = self.find(d)
                reps[id(r)] = r
                syms[id(r)] -= 1
            else:
                d_int *= d
        left = {k: v for k, v in syms.items() if v}
        if d_int == 0 or n_int % d_int:
            return None
        ratio = n_int // d_int
        if not left:
            return ratio
        if len(left) == 1 and list(left.values()) == [1] and ratio == 1:
            return reps[next(iter(left))]
        return None

    def _axes(self, node: gs.Node) -> list[int] | None:
        if "axes" in node.attrs:
            return [int(a) for a in node.attrs["axes"]]
        if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            return [int(a) for a in np.asarray(node.inputs[1].values).reshape(-1)]
        return None

    def _squeeze(self, node: gs.Node, x: list) -> list | None:
        axes = self._axes(node)
        if axes is None:
            return None
        if node.op == "Squeeze":
            drop = {a % len(x) for a in axes}
            return [d for i, d in enumerate(x) if i not in drop]
        r = len(x) + len(axes)
        add = {a % r for a in axes}
        it = iter(x)
        return [1 if i in add else next(it) for i in range(r)]

    def _concat(self, node: gs.Node, ins: list) -> list | None:
        if any(s is None for s in ins):
            return None
        r = len(ins[0])
        axis = int(node.attrs.get("axis", 0)) % r
        out = list(ins[0])
        sizes = [s[axis] for s in ins]
        out[axis] = sum(sizes) if all(isinstance(s, int) for s in sizes) else Sym(f"{node.outputs[0].name}:{axis}")
        return out

    def _gather(self, node: gs.Node, x: list, idx: list | None) -> list | None:
        if idx is None:
            return None
        axis = int(node.attrs.get("axis", 0)) % len(x)
        return x[:axis] + idx + x[axis + 1:]

    def _reduce(self, node: gs.Node, x: list) -> list | None:
        axes = self._axes(node)
        keep = int(node.attrs.get("keepdims", 1))
        if axes is None:
            return [1] * len(x) if keep else []
        red = {a % len(x) for a in axes}
        return [1 if i in red else d for i, d in enumerate(x)] if keep else [d for i, d in enumerate(x) if i not in red]

    def _spatial(self, node: gs.Node, x: list, ins: list) -> list | None:
        name = node.outputs[0].name
        out = [x[0]] + [Sym(f"{name}:{i}") for i in range(1, len(x))]
        if node.op in ("Conv",) and len(ins) > 1 and ins[1] is not None:
            out[1] = ins[1][0]
        elif node.op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool"):
            out[1] = x[1]
        return out

    def _slice(self, node: gs.Node, x: list) -> list | None:
        axes_t = node.inputs[3] if len(node.inputs) > 3 else None
        if "axes" in node.attrs:
            axes = [int(a) for a in node.attrs["axes"]]
        elif axes_t is not None and axes_t.name:
            if not isinstance(axes_t, gs.Constant):
                return None
            axes = [int(a) for a in np.asarray(axes_t.values).reshape(-1)]
        elif "starts" in node.attrs:
            axes = list(range(len(node.attrs["starts"])))
        else:
            starts = node.inputs[1] if len(node.inputs) > 1 else None
            if not isinstance(starts, gs.Constant):
                return None
            axes = list(range(int(np.asarray(starts.values).size)))
        touched = {a % len(x) for a in axes}
        name = node.outputs[0].name
        return [Sym(f"{name}:{i}") if i in touched else d for i, d in enumerate(x)]
