"""Find removable blocks: residual blocks ``y = x + f(x)`` and transformer layers, on any graph.

The analysis is structural (no names, no op patterns beyond the residual Add):

1. Build the node-level dataflow graph (networkx), with graph inputs as pseudo-nodes and a
   virtual sink fed by every graph output. Edges into ``Shape``/``Size`` are left out: those
   read only a tensor's shape, which bypassing a block keeps, so they are not data dependences
   (without this, BERT-style exports that take ``Shape`` of the embeddings in every layer would
   have no single-entry regions at all).
2. Post-dominator tree (``nx.immediate_dominators`` on the reversed graph from the sink).
3. A residual block is an ``Add`` with one input ``x`` (the identity shortcut) and the other
   computed from ``x`` by ``f``: the users of ``x`` that the ``Add`` post-dominates and their
   descendants up to the ``Add``. Post-dominance makes ``f`` single-exit (nothing inside it
   escapes past the ``Add``); ``f`` must also be single-entry (it reads nothing derived from
   ``x`` except through itself). A projection shortcut (``Add(f(x), g(x))``) has no input that
   the other depends on, so it is never a candidate.
4. The exit is extended from the ``Add`` along the post-dominator chain over element-wise and
   normalisation nodes, to where the next block reads the stream (a tensor that is another
   residual's shortcut: ResNet's ``Relu`` after the ``Add``, post-LN's ``LayerNorm``, the ``Add``
   itself in pre-LN); for the last block, to the first node like the one that produced ``x``.
   Bypassing a block then maps stream to stream, the representation the next block expects;
   pre-LN blocks end at the ``Add`` and never swallow the final norm.
5. Consecutive attention (``Softmax`` inside) and MLP sub-blocks group into transformer layers.

A block is only offered when removing it really deletes its region: rewiring the exit's users
to the entry must leave every region node dead (checked by simulating dead-code elimination),
and entry and exit must have the same dtype and compatible shapes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.rewrite import outer_inputs, subgraphs_of

SINK = "sink"
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Ops a block's exit may be extended over (element-wise, normalisation, activation, no weights
# beyond per-channel affine parameters).
STREAM_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf",
    "Elu", "Selu", "Softplus", "Mish", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
    "GroupNormalization", "SimplifiedLayerNormalization", "Dropout", "Identity", "ReduceMean", "Sub", "Pow",
    "Sqrt", "Div", "Mul", "Add", "Cast", "Reciprocal",
})
MAX_EXTEND = 12


@dataclass(frozen=True)
class Block:
    """A removable block: bypassing it means every user of ``exit`` reads ``entry`` instead.

    ``nodes`` are the region's node indices in the (toposorted) graph at detection time; they
    serve reporting and costing. Removal itself only needs the two tensor names.
    """

    id: int
    kind: str              # "residual" | "attention" | "mlp" | "transformer_layer"
    entry: str             # tensor name: the block's input (its identity shortcut)
    exit: str              # tensor name: the block's output
    nodes: tuple[int, ...]
    parts: int = 1         # sub-blocks merged into this one (2 for attention+MLP)


@dataclass
class _Residual:
    entry: str
    exit: str
    exit_node: int
    region: set[int] = field(default_factory=set)
    kind: str = "residual"


# ---------------------------------------------------------------------------------------------
# dataflow and post-dominators


@dataclass
class Dataflow:
    """Node-level dataflow graph of one gs graph plus its post-dominator tree."""

    graph: gs.Graph
    nodes: list[gs.Node]
    g: nx.DiGraph
    ipdom: dict
    producer: dict[str, object]          # tensor name -> node index or ("in", name)
    consumers: dict[str, list[int]]      # tensor name -> node indices (all reads, shape reads included)

    @classmethod
    def build(cls, graph: gs.Graph) -> "Dataflow":
        nodes = list(graph.nodes)
        g = nx.DiGraph()
        producer: dict[str, object] = {}
        for t in graph.inputs:
            key = ("in", t.name)
            g.add_node(key)
            producer[t.name] = key
        for i, node in enumerate(nodes):
            g.add_node(i)
            for t in node.outputs:
                if t.name:
                    producer[t.name] = i
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            for t in _reads(node):
                consumers.setdefault(t.name, []).append(i)
                src = producer.get(t.name)
                if src is not None and node.op not in SHAPE_ONLY_OPS:
                    g.add_edge(src, i)
        g.add_node(SINK)
        for t in graph.outputs:
            src = producer.get(t.name)
            if src is not None:
                g.add_edge(src, SINK)
        ipdom = nx.immediate_dominators(g.reverse(copy=False), SINK)
        return cls(graph, nodes, g, ipdom, producer, consumers)

    def postdominates(self, a, b) -> bool:
        """True if every path from ``b`` to the outputs passes through ``a`` (a == b counts)."""
        if b not in self.ipdom:
            return False
        while True:
            if b == a:
                return True
            nxt = self.ipdom.get(b, SINK)
            if nxt == b or nxt == SINK:
                return False
            b = nxt

    def region(self, start, stop) -> set[int]:
        """Nodes on data paths from ``start`` up to and including ``stop`` (``stop`` post-dominates
        ``start``, so the search never leaves the region)."""
        seen: set[int] = set()
        frontier = [start]
        while frontier:
            cur = frontier.pop()
            if cur == stop:
                continue
            for nxt in self.g.successors(cur):
                if nxt != SINK and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return seen


def _reads(node: gs.Node) -> list[gs.Variable]:
    """Variable tensors a node reads, including those its subgraphs read from this scope."""
    out = [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]
    for sub in subgraphs_of(node):
        out.extend(t for t in outer_inputs(sub) if isinstance(t, gs.Variable) and t.name)
    return out


# ---------------------------------------------------------------------------------------------
# detection


def find_blocks(graph: gs.Graph) -> list[Block]:
    """Removable blocks of a toposorted graph with shapes, ordered by position, ids 0..n-1."""
    flow = Dataflow.build(graph)
    raw = [r for r in (_residual_at(flow, i) for i, n in enumerate(flow.nodes) if n.op == "Add") if r is not None]
    shortcuts = {r.entry for r in raw}
    residuals = []
    for r in raw:
        exit_node, extra = _extend_exit(flow, r.entry, r.exit_node, shortcuts)
        exit_tensor = _single_output(flow, flow.nodes[exit_node])
        if exit_tensor is None or not _same_type(graph.tensors()[r.entry], exit_tensor):
            continue
        residuals.append(_Residual(r.entry, exit_tensor.name, exit_node, r.region | extra))
    residuals = _innermost(residuals)
    residuals = [r for r in residuals if _removal_kills_region(flow, r)]
    for r in residuals:
        r.kind = _sub_kind(flow, r)
    grouped = _group_layers(residuals)
    grouped.sort(key=lambda rs: rs[-1].exit_node)
    blocks = []
    for k, parts in enumerate(grouped):
        nodes = set().union(*(p.region for p in parts))
        kind = "transformer_layer" if len(parts) > 1 else parts[0].kind
        blocks.append(Block(k, kind, parts[0].entry, parts[-1].exit, tuple(sorted(nodes)), len(parts)))
    return blocks


def _residual_at(flow: Dataflow, add: int) -> _Residual | None:
    """``Add(x, f(x))``: the raw block (exit at the Add), or None.

    ``f`` is what the Add post-dominates among the users of ``x`` and their descendants; it must
    hold the Add's other operand, and read nothing derived from ``x`` except through itself
    (single entry). Users of ``x`` outside ``f`` (a graph output, a later dense connection) do
    not matter: ``x`` stays.
    """
    node = flow.nodes[add]
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, b = node.inputs
    if not (isinstance(a, gs.Variable) and isinstance(b, gs.Variable)) or a.name == b.name:
        return None
    for skip, other in ((a, b), (b, a)):
        skip = _through_passthrough(flow, skip)
        p = flow.producer.get(skip.name)
        q = flow.producer.get(other.name)
        if p is None or q is None:
            continue
        users = [c for c in flow.consumers.get(skip.name, ())
                 if c != add and flow.nodes[c].op not in SHAPE_ONLY_OPS and flow.postdominates(add, c)]
        region = {add, *users}
        for c in users:
            region |= flow.region(c, add)
        if q in region and _single_entry(flow, p, region):
            return _Residual(skip.name, node.outputs[0].name, add, region)
    return None


def _through_passthrough(flow: Dataflow, t: gs.Variable) -> gs.Variable:
    """The stream tensor behind a shortcut that reaches the Add through value-preserving nodes
    used only there (exporters insert same-type Casts and Identities on both operands)."""
    while len(flow.consumers.get(t.name, ())) == 1 and len(t.inputs) == 1:
        node = t.inputs[0]
        src = node.inputs[0] if node.inputs else None
        same_type = src is not None and src.dtype is not None and t.dtype is not None and src.dtype == t.dtype
        if not (isinstance(src, gs.Variable) and len(node.outputs) == 1
                and (node.op == "Identity" or (node.op == "Cast" and same_type))):
            break
        t = src
    return t


def _single_entry(flow: Dataflow, entry, region: set[int]) -> bool:
    """No region node reads a value that depends on ``entry`` from outside the region."""
    downstream = None
    for n in region:
        for pred in flow.g.predecessors(n):
            if pred == entry or pred in region:
                continue
            if downstream is None:
                downstream = nx.descendants(flow.g, entry)
            if pred in downstream:
                return False
    return True


def _extend_exit(flow: Dataflow, entry: str, add: int, shortcuts: set[str]) -> tuple[int, set[int]]:
    """Where the block ends, walking the post-dominator chain from the Add over stream ops:

    - at the first node whose output is the shortcut of another residual (the next block reads
      the stream there: ResNet's Relu, post-LN's LayerNorm, or the Add itself in pre-LN);
    - else (the last block) at the first node like the one that produced the entry (a block
      maps stream to stream);
    - else at the Add.
    """
    producer = flow.producer.get(entry)
    want = _signature(flow.nodes[producer]) if isinstance(producer, int) else None
    cur, extra, like_entry = add, set(), None
    for _ in range(MAX_EXTEND + 1):
        out = _single_output(flow, flow.nodes[cur])
        if out is not None and out.name in shortcuts:
            return cur, extra
        if like_entry is None and cur != add and _signature(flow.nodes[cur]) == want:
            like_entry = (cur, set(extra))
        nxt = flow.ipdom.get(cur)
        if nxt is None or nxt == cur or nxt == SINK:
            break
        step = flow.region(cur, nxt)
        if any(flow.nodes[n].op not in STREAM_OPS for n in step):
            break
        extra |= step
        cur = nxt
    return like_entry if like_entry is not None else (add, set())


def _signature(node: gs.Node) -> tuple[str, str, int]:
    return node.op, node.domain or "", sum(isinstance(t, gs.Constant) for t in node.inputs)


def _single_output(flow: Dataflow, node: gs.Node) -> gs.Variable | None:
    """The node's one used output (LayerNorm's optional mean/inv-std outputs may exist unused)."""
    outputs = {t.name for t in flow.graph.outputs}
    used = [t for t in node.outputs if t.name and (t.name in flow.consumers or t.name in outputs)]
    return used[0] if len(used) == 1 else None


def _same_type(a: gs.Tensor, b: gs.Tensor) -> bool:
    """Same dtype and compatible shapes; symbolic dims are taken as compatible (the sensitivity
    run checks the real shapes: a mismatch scores cosine 0)."""
    if a.dtype is not None and b.dtype is not None and np.dtype(a.dtype) != np.dtype(b.dtype):
        return False
    if a.shape is None or b.shape is None:
        return True
    if len(a.shape) != len(b.shape):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a.shape, b.shape))


def _innermost(residuals: list[_Residual]) -> list[_Residual]:
    """Nested residuals (a block around blocks): keep the inner ones, which never overlap."""
    kept: list[_Residual] = []
    for r in sorted(residuals, key=lambda r: len(r.region)):
        if all(not (r.region & k.region) for k in kept):
            kept.append(r)
    return kept


def _removal_kills_region(flow: Dataflow, r: _Residual) -> bool:
    """Simulate the bypass and dead-code elimination: every region node must die."""
    live = _live_after_bypass(flow, {r.exit: r.entry})
    return not any(n in live for n in r.region)


def _live_after_bypass(flow: Dataflow, rewire: dict[str, str]) -> set[int]:
    """Node indices still needed once users of each ``rewire`` key read its value instead."""
    nodes = flow.nodes
    needed = {resolve(rewire, t.name) for t in flow.graph.outputs}
    live: set[int] = set()
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        if not any(t.name in needed for t in node.outputs if t.name):
            continue
        live.add(i)
        needed.update(resolve(rewire, t.name) for t in _reads(node))
    return live


def resolve(rewire: dict[str, str], name: str) -> str:
    """Follow a chain of bypasses (block B's entry is block A's exit, both removed)."""
    seen = set()
    while name in rewire and name not in seen:
        seen.add(name)
        name = rewire[name]
    return name


def _sub_kind(flow: Dataflow, r: _Residual) -> str:
    ops = Counter(flow.nodes[n].op for n in r.region)
    if ops["Softmax"] or ops["Attention"] or ops["MultiHeadAttention"]:
        return "attention"
    if any(ops[o] for o in ("MatMul", "Gemm")) and not ops["Conv"]:
        return "mlp"
    return "residual"


def _group_layers(residuals: list[_Residual]) -> list[list[_Residual]]:
    """Attention sub-blocks followed (exit == next entry) by an MLP sub-block form one layer."""
    by_entry = {r.entry: r for r in residuals}
    used: set[int] = set()
    groups: list[list[_Residual]] = []
    for r in sorted(residuals, key=lambda r: r.exit_node):
        if id(r) in used or r.kind != "attention":
            continue
        chain = [r]
        while chain[-1].kind == "attention" and chain[-1].exit in by_entry:
            nxt = by_entry[chain[-1].exit]
            if id(nxt) in used or nxt.kind not in ("attention", "mlp"):
                break
            chain.append(nxt)
            if nxt.kind == "mlp":
                break
        if chain[-1].kind == "mlp":
            used.update(id(c) for c in chain)
            groups.append(chain)
    groups.extend([r] for r in residuals if id(r) not in used)
    return groups
