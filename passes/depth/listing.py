"""``onnxopt blocks MODEL [--calib DATA]``: the candidate blocks with their costs and, given data,
how much the outputs move when each one alone is bypassed. Returns data; the CLI prints it."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import ir, validate
from onnxopt.analysis import ESTABLISH
from onnxopt.pass_base import PassContext

from .blocks import Block, find_blocks
from .cost import block_macs, block_params, inferred_shapes, mac_tensors, runtime_shapes
from .sensitivity import Evaluator


@dataclass(frozen=True)
class BlockInfo:
    """One candidate block, as `onnxopt blocks` shows it and `depth{blocks=...}` names it."""

    id: int
    kind: str                   # residual | attention | mlp | transformer_layer
    entry: str                  # input tensor (identity shortcut)
    exit: str                   # output tensor; removal makes its users read ``entry``
    first_node: str             # op span: first and last node of the region, in graph order
    last_node: str
    nodes: int                  # nodes in the region
    ops: dict[str, int]         # op histogram of the region
    params: int                 # weight elements the region reads
    macs: int | None            # Conv/MatMul/Gemm MACs at ``shapes`` (None: shapes unknown)
    sensitivity: float | None   # mean output cosine with this block alone bypassed (None: no data)
    max_rel: float | None       # worst relative output error with it bypassed

    @property
    def span(self) -> str:
        return f"{self.first_node} .. {self.last_node}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["span"] = self.span
        return d


def prepared_graph(loaded: ir.LoadedModel) -> tuple[gs.Graph, PassContext]:
    """The model as a toposorted gs graph with shapes, as the manager hands it to ``depth``."""
    proto = loaded.proto
    ctx = PassContext(opsets={i.domain: i.version for i in proto.opset_import}, ir_version=proto.ir_version)
    graph = ir.to_graph(loaded)
    for need in ("toposorted", "shapes"):
        ESTABLISH[need](graph, ctx)
    return graph, ctx


def input_ranks(graph: gs.Graph) -> dict[str, int]:
    """Rank of each real graph input (the data convention needs it to split samples)."""
    return {t.name: len(t.shape) for t in graph.inputs if t.shape is not None}


def concrete_input_shapes(graph: gs.Graph, feeds: list[dict[str, np.ndarray]],
                          shapes: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """Shapes to cost at: the first sample's, else ``shapes``, else validate's defaults."""
    if feeds:
        return {k: tuple(v.shape) for k, v in feeds[0].items()}
    return {t.name: validate.concrete_shape(t.name, list(t.shape or []), shapes) for t in graph.inputs}


def describe(graph: gs.Graph, blocks: list[Block], shapes: dict[str, tuple],
             scores: dict[int, object] | None = None) -> list[BlockInfo]:
    nodes = list(graph.nodes)
    out = []
    for b in blocks:
        ordered = sorted(b.nodes)
        score = (scores or {}).get(b.id)
        out.append(BlockInfo(
            id=b.id, kind=b.kind, entry=b.entry, exit=b.exit,
            first_node=_label(nodes, ordered[0]), last_node=_label(nodes, ordered[-1]), nodes=len(ordered),
            ops=dict(Counter(nodes[i].op for i in ordered).most_common()),
            params=block_params(nodes, b), macs=block_macs(nodes, b, shapes),
            sensitivity=None if score is None else score.cosine,
            max_rel=None if score is None else score.max_rel))
    return out


def _cost_shapes(proto, graph, blocks, feeds, shapes) -> dict[str, tuple]:
    """Static inference first; one ORT run at the same shapes when that leaves dims unknown."""
    pinned = concrete_input_shapes(graph, feeds, shapes)
    found = inferred_shapes(proto, pinned)
    needed = mac_tensors(list(graph.nodes), blocks)
    if all(found.get(n) is not None and None not in found[n] for n in needed):
        return found
    sample = feeds[0] if feeds else validate.random_inputs(validate.session(proto), pinned, seed=0)
    found.update(runtime_shapes(proto, needed, sample))
    return found


def _label(nodes: list[gs.Node], i: int) -> str:
    return nodes[i].name or f"#{i} {nodes[i].op}"


def list_blocks(model: onnx.ModelProto | str | Path, calib=None, *, samples: int = 8,
                shapes: dict[str, tuple[int, ...]] | None = None, progress=None) -> list[BlockInfo]:
    """Candidate blocks of ``model`` (proto or path). With ``calib`` (a Dataset or a path to .npz
    data), each block's sensitivity is measured on its first ``samples`` samples."""
    from onnxopt.api import open_data, open_model  # the framework's own loaders

    loaded = open_model(model)
    graph, _ = prepared_graph(loaded)
    blocks = find_blocks(graph)
    data = open_data(calib)
    feeds = data.take(input_ranks(graph), samples) if data is not None else []
    proto = ir.to_proto(graph, ir.header_of(loaded.proto))
    cost_shapes = _cost_shapes(proto, graph, blocks, feeds, shapes)
    scores = None
    if data is not None and blocks:
        evaluator = Evaluator(proto, blocks, feeds)
        try:
            scores = {}
            for k, b in enumerate(blocks):
                scores[b.id] = evaluator.score({b.id})
                if progress is not None:
                    progress("depth: sensitivity", k + 1, len(blocks))
        finally:
            evaluator.close()
    return describe(graph, blocks, cost_shapes, scores)
