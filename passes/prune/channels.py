"""Channel-dependency analysis: which channels of which tensors must be removed together.

Every channel that a layer creates (a Conv/ConvTranspose/Gemm/MatMul output row) is an *atom*.
A tensor whose channel axis we follow carries a ``Track``: its channel axis and, per position
along that axis, the atom it holds and the value it is known to have everywhere (or NaN).
Ops couple atoms (a residual Add says channel i of both branches is one channel; a depthwise
Conv ties an input channel to its output channel; Concat lays inputs side by side; Flatten
repeats a channel over its spatial block). The couplings form a networkx graph over atoms; its
connected components are the *groups*: a group is removed from every tensor at once or not at
all. Anything the per-op rules (``ops.py``) do not understand blocks the atoms it touches, as do
graph inputs/outputs and values read by subgraphs.

A group can leave the graph only where a layer reduces over channels (an *exit*: Conv, Gemm,
MatMul inputs). Removing it there is exact when the channel is provably zero, or provably a
constant the exit can fold into its bias (no spatial padding in between).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt.rewrite import outer_inputs, subgraphs_of

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class Track:
    """How a tensor's channel axis maps onto atoms, and what each position is known to hold."""

    axis: int
    rank: int
    atoms: np.ndarray            # int64 atom id per position along ``axis``
    values: np.ndarray           # float64 constant held at each position, NaN where unknown

    @property
    def size(self) -> int:
        return int(self.atoms.size)


@dataclass
class Effect:
    """What a rule says about one node; the driver commits it (rules never mutate state)."""

    outputs: dict[int, Track] = field(default_factory=dict)
    handled: set[int] = field(default_factory=set)          # input slots whose tracks it accounts for
    unions: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    blocks: list[np.ndarray] = field(default_factory=list)
    exits: list["ExitSpec"] = field(default_factory=list)
    producers: list["Producer"] = field(default_factory=list)
    scales: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (atoms, |BN gamma|)
    plan: dict = field(default_factory=dict)                 # data the rule's shrink step needs


@dataclass
class ExitSpec:
    """Input slot ``slot`` reduces over channels; ``fold_ok``: a constant channel folds exactly."""

    slot: int
    fold_ok: bool
    weight_norm: np.ndarray       # L1 norm of the weights each position meets (activation ranking)


@dataclass
class Exit:
    node: gs.Node
    tensor: gs.Tensor
    fold_ok: bool
    weight_norm: np.ndarray


@dataclass
class Producer:
    """Rows of ``node`` that create ``atoms`` (ranking by weight magnitude, per-layer report)."""

    node: gs.Node | None
    atoms: np.ndarray
    l1: np.ndarray
    l2sq: np.ndarray
    params_per_row: int


class Env:
    """Read-only view for rules: tracks so far, constants, shapes, fresh atoms, opset."""

    def __init__(self, analysis: "ChannelAnalysis", opset: int, shapes: dict[str, list[int | None]]):
        self._a = analysis
        self.opset = opset
        self._shapes = shapes

    def track(self, t: gs.Tensor) -> Track | None:
        return self._a.tracks.get(id(t))

    def fresh(self, n: int) -> np.ndarray:
        return self._a.fresh(n)

    @staticmethod
    def const(t: gs.Tensor | None) -> np.ndarray | None:
        return const_array(t)

    def shape(self, t: gs.Tensor | None) -> list[int | None] | None:
        return static_shape(t, self._shapes)


def peek(c: gs.Constant) -> np.ndarray | None:
    """A constant's numeric values without caching them in the Constant.

    ``Constant.values`` swaps gs's lazy proto-backed value for a numpy array, which changes how
    the constant exports (string tensors stop exporting at all). Only numeric, bool tensors load.
    """
    raw = c._values
    if isinstance(raw, LazyValues):
        np_type = get_numpy_type(raw.dtype) if not isinstance(raw.dtype, np.dtype) else raw.dtype
        if np_type is None or np.dtype(np_type).kind not in "fiub":
            return None
        try:
            return raw.load()
        except Exception:  # noqa: BLE001 - sparse or exotic payloads
            return None
    value = np.asarray(raw)
    return value if value.dtype.kind in "fiub" else None


def const_array(t: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None for anything else."""
    if t is None or is_empty(t):
        return None
    if isinstance(t, gs.Constant):
        return peek(t)
    if len(t.inputs) == 1:
        node = t.inputs[0]
        if node.op == "Constant" and (node.domain or "") in DEFAULT_DOMAINS:
            value = node.attrs.get("value")
            if isinstance(value, gs.Constant):
                return peek(value)
            for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                               ("value_int", np.int64), ("value_ints", np.int64)):
                if key in node.attrs:
                    return np.asarray(node.attrs[key], dtype=dtype)
    return None


def const_size(t: gs.Tensor | None) -> int | None:
    """Element count of a floating-point constant (initializer or Constant node), without loading it."""
    if t is None or is_empty(t):
        return None
    c = t if isinstance(t, gs.Constant) else None
    if c is None and len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        value = t.inputs[0].attrs.get("value")
        c = value if isinstance(value, gs.Constant) else None
    if c is None:
        return None
    raw = c._values
    dtype = raw.dtype if not isinstance(raw, LazyValues) else (
        raw.dtype if isinstance(raw.dtype, np.dtype) else get_numpy_type(raw.dtype))
    if dtype is None or np.dtype(dtype).kind != "f":
        return None
    return int(np.prod(c.shape, dtype=np.int64))


def static_shape(t: gs.Tensor | None, inferred: dict[str, list[int | None]] | None = None) -> list[int | None] | None:
    """Shape with unknown/symbolic dims as None; None when even the rank is unknown.

    The tensor's recorded shape wins; ``inferred`` (name -> dims) fills in where it has none."""
    if t is None:
        return None
    if isinstance(t, gs.Constant):
        return list(t.shape)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and isinstance(t.inputs[0].attrs.get("value"), gs.Constant):
        return list(t.inputs[0].attrs["value"].shape)
    if t.shape is None:
        return list(inferred[t.name]) if inferred and t.name in inferred else None
    dims = [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in t.shape]
    if inferred and t.name in inferred and len(inferred[t.name]) == len(dims):
        dims = [d if d is not None else i for d, i in zip(dims, inferred[t.name])]
    return dims


def is_empty(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and t.name == ""


class ChannelAnalysis:
    """The analysis of one graph scope (subgraph bodies get their own, see ``analyze``)."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.tracks: dict[int, Track] = {}
        self.tensors: dict[int, gs.Tensor] = {}
        self.coupling = nx.Graph()
        self.blocked: set[int] = set()
        self.exits: list[Exit] = []
        self.producers: list[Producer] = []
        self.scales: list[tuple[np.ndarray, np.ndarray]] = []
        self.plans: dict[int, tuple[object, dict]] = {}   # id(node) -> (rule, plan)
        self.blocked_ops: dict[str, int] = {}
        self._next_atom = 0
        self._group_of: np.ndarray | None = None

    # -- building ------------------------------------------------------------------------------

    def fresh(self, n: int) -> np.ndarray:
        atoms = np.arange(self._next_atom, self._next_atom + n, dtype=np.int64)
        self._next_atom += n
        return atoms

    def block(self, atoms: np.ndarray) -> None:
        self.blocked.update(int(a) for a in np.unique(atoms))

    def block_tensor(self, t: gs.Tensor) -> None:
        track = self.tracks.get(id(t))
        if track is not None:
            self.block(track.atoms)

    def commit(self, node: gs.Node, rule, effect: Effect) -> None:
        for slot, t in enumerate(node.inputs):
            if slot not in effect.handled:
                self.block_tensor(t)
        for a, b in effect.unions:
            self.coupling.add_edges_from(zip(a.tolist(), b.tolist()))
        for atoms in effect.blocks:
            self.block(atoms)
        for spec in effect.exits:
            self.exits.append(Exit(node, node.inputs[spec.slot], spec.fold_ok, spec.weight_norm))
        for p in effect.producers:
            self.producers.append(Producer(node, p.atoms, p.l1, p.l2sq, p.params_per_row))
        self.scales.extend(effect.scales)
        for slot, track in effect.outputs.items():
            out = node.outputs[slot]
            if is_empty(out):
                continue
            self.tracks[id(out)] = track
            self.tensors[id(out)] = out
        if effect.outputs or effect.plan:
            self.plans[id(node)] = (rule, effect.plan)

    def reject(self, node: gs.Node) -> None:
        """A node no rule understands: every channel that touches it stays."""
        tracked = False
        for t in node.inputs:
            tracked |= id(t) in self.tracks
            self.block_tensor(t)
        for sub in subgraphs_of(node):
            for t in outer_inputs(sub):
                tracked |= id(t) in self.tracks
                self.block_tensor(t)
        if tracked:
            self.blocked_ops[node.op] = self.blocked_ops.get(node.op, 0) + 1

    # -- groups --------------------------------------------------------------------------------

    def group_of(self) -> np.ndarray:
        """Atom -> group id (the smallest atom of its connected component)."""
        if self._group_of is None:
            group = np.arange(self._next_atom, dtype=np.int64)
            for component in nx.connected_components(self.coupling):
                members = np.fromiter(component, dtype=np.int64)
                group[members] = members.min()
            self._group_of = group
        return self._group_of

    def groups_in(self, track: Track) -> np.ndarray:
        return self.group_of()[track.atoms]

    def all_groups(self) -> set[int]:
        groups: set[int] = set()
        for track in self.tracks.values():
            groups.update(np.unique(self.groups_in(track)).tolist())
        return groups

    def blocked_groups(self) -> set[int]:
        g = self.group_of()
        return {int(g[a]) for a in self.blocked}

    def inexact_groups(self) -> set[int]:
        """Groups that reach some exit with a value that does not vanish or fold exactly."""
        bad: set[int] = set()
        for ex in self.exits:
            track = self.tracks[id(ex.tensor)]
            v = track.values
            exact = (v == 0) | (np.isfinite(v) & ex.fold_ok)
            bad.update(np.unique(self.groups_in(track)[~exact]).tolist())
        return bad

    def exact_groups(self) -> set[int]:
        """Groups whose removal leaves every output value unchanged."""
        return self.all_groups() - self.blocked_groups() - self.inexact_groups()

    def prunable_groups(self) -> set[int]:
        """Groups that can be cut structurally at all (lossy when not exact)."""
        return self.all_groups() - self.blocked_groups()

    def keep_nonempty(self, removed: set[int]) -> set[int]:
        """Never empty a tensor: keep the first group of any tensor that would lose every channel.

        Groups are independent of each other, so keeping one never invalidates another, and
        one sweep suffices (keeping only ever shrinks the removed set).
        """
        removed = set(removed)
        for track in self.tracks.values():
            groups = self.groups_in(track)
            if all(int(g) in removed for g in np.unique(groups)):
                removed.discard(int(groups[0]))
        return removed

    def keep_masks(self, removed: set[int]) -> dict[int, np.ndarray]:
        """id(tensor) -> boolean keep mask along its channel axis, for tensors that shrink."""
        if not removed:
            return {}
        gone = np.fromiter(removed, dtype=np.int64)
        masks = {}
        for tid, track in self.tracks.items():
            keep = ~np.isin(self.groups_in(track), gone)
            if not keep.all():
                masks[tid] = keep
        return masks


def analyze(graph: gs.Graph, opset: int, rules: dict,
            shapes: dict[str, list[int | None]] | None = None) -> ChannelAnalysis:
    """Run the per-op rules over one scope in topological order (``graph.nodes`` is sorted).

    Subgraph bodies are not entered here: the caller analyses each body as its own scope, and
    any value a body reads from this scope is blocked (a body's signature is fixed).
    """
    analysis = ChannelAnalysis(graph)
    env = Env(analysis, opset, shapes or {})
    for node in graph.nodes:
        rule = rules.get(node.op) if (node.domain or "") in DEFAULT_DOMAINS and not subgraphs_of(node) else None
        effect = rule.analyze(node, env) if rule is not None else None
        if effect is None:
            analysis.reject(node)
        else:
            analysis.commit(node, rule, effect)
    for t in graph.outputs:
        analysis.block_tensor(t)
    for t in graph.inputs:  # a tensor can be both an input and a node output only in broken graphs
        analysis.block_tensor(t)
    return analysis
