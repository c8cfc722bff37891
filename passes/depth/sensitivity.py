"""Measure how far the outputs move when blocks are bypassed, in ONNX Runtime, cheaply.

One session answers every question: the model is exported once with a boolean gate per block
(``exit = Where(gate, entry, exit_inner)``), so bypassing any set of blocks is a choice of
feeds, not a new model. That removes the per-candidate export and session start (seconds each
on a BERT-sized model) from the greedy loop; what remains is one forward pass per candidate on
a few samples, batched when the samples' shapes agree. Scores are cached per set of blocks.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxopt import ir, validate
from onnxopt.errors import UsageError

from .blocks import Block

GATE_PREFIX = "onnxopt_depth_gate_"
INNER_SUFFIX = "__onnxopt_depth_inner"
MAX_BATCH = 8


@dataclass(frozen=True)
class Score:
    """Output agreement with the unmodified model: cosine (mean and worst over samples and
    outputs) and the worst relative error max|a-b|/max|a|."""

    cosine: float
    min_cosine: float
    max_rel: float
    samples: int


def gate_name(block_id: int) -> str:
    return f"{GATE_PREFIX}{block_id}"


def gated_model(model: onnx.ModelProto, blocks: list[Block]) -> onnx.ModelProto:
    """Add a scalar bool input per block that, when true, bypasses it. Edits ``model`` in place."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    if opset < 9:
        raise UsageError(f"depth: measuring sensitivity needs opset >= 9 (model has {opset}); "
                         "name the blocks with depth{blocks=...} instead")
    graph = model.graph
    where_after: dict[int, list[onnx.NodeProto]] = {}
    position = {out: k for k, node in enumerate(graph.node) for out in node.output}
    for b in blocks:
        k = position.get(b.exit)
        if k is None:
            raise ValueError(f"block {b.id}: exit tensor {b.exit!r} has no producer")
        node = graph.node[k]
        inner = b.exit + INNER_SUFFIX
        node.output[list(node.output).index(b.exit)] = inner
        graph.input.append(helper.make_tensor_value_info(gate_name(b.id), onnx.TensorProto.BOOL, []))
        where_after.setdefault(k, []).append(
            helper.make_node("Where", [gate_name(b.id), b.entry, inner], [b.exit], name=f"onnxopt_depth_where_{b.id}"))
    nodes = []
    for k, node in enumerate(graph.node):
        nodes.append(node)
        nodes.extend(where_after.get(k, ()))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


class Evaluator:
    """Scores sets of bypassed blocks against the unmodified model's outputs on fixed samples.

    ``feeds`` select; ``holdout`` (optional) checks the final choice on samples selection never
    saw. Both run in the same session.
    """

    def __init__(self, model: onnx.ModelProto, blocks: list[Block], feeds: list[dict[str, np.ndarray]],
                 *, holdout: list[dict[str, np.ndarray]] | None = None, threads: int = 0):
        if not feeds:
            raise UsageError("depth: the calibration data holds no samples")
        self.blocks = {b.id: b for b in blocks}
        self._tmp = None
        self.session = self._session(gated_model(model, blocks), threads)
        self.evaluations = 0
        self._sets = {"select": feeds, "holdout": list(holdout or [])}
        self._prepared: dict[str, tuple[list, list]] = {}
        self._cache: dict[tuple[str, frozenset[int]], Score] = {}

    @property
    def has_holdout(self) -> bool:
        return bool(self._sets["holdout"])

    def _session(self, model: onnx.ModelProto, threads: int):
        if model.ByteSize() <= validate.ORT_MAX_PROTO:
            return validate.session(model, optimize=True, threads=threads)
        self._tmp = tempfile.TemporaryDirectory(prefix="onnxopt_depth_")
        path = Path(self._tmp.name) / "gated.onnx"
        ir.save(model, path, external=True)
        return validate.session(path, optimize=True, threads=threads)

    def _run(self, batch: dict[str, np.ndarray], removed: frozenset[int]) -> list[np.ndarray]:
        feeds = dict(batch)
        for bid in self.blocks:
            feeds[gate_name(bid)] = np.array(bid in removed)
        return self.session.run(None, feeds)

    def _prepare(self, which: str) -> tuple[list, list]:
        """Batches of one sample set and the unmodified model's outputs on them."""
        if which not in self._prepared:
            feeds = self._sets[which]
            batches = _batches(self.session, feeds)
            try:
                reference = [self._run(batch, frozenset()) for batch, _ in batches]
            except Exception:  # noqa: BLE001 - a model that fixes its batch inside: run samples one by one
                batches = _batches(self.session, feeds, allow=False)
                reference = [self._run(batch, frozenset()) for batch, _ in batches]
            self._prepared[which] = (batches, reference)
        return self._prepared[which]

    def score(self, removed, *, on: str = "select") -> Score:
        """Agreement of the outputs with ``removed`` bypassed, on the ``select`` or ``holdout``
        samples (cached)."""
        key = frozenset(removed)
        unknown = key - set(self.blocks)
        if unknown:
            raise ValueError(f"unknown block ids {sorted(unknown)}")
        if not self._sets[on]:
            raise ValueError(f"no {on} samples")
        if (on, key) not in self._cache:
            batches, reference = self._prepare(on)
            self.evaluations += 1
            cosines, worst_rel = [], 0.0
            for (batch, size), ref in zip(batches, reference):
                try:
                    got = self._run(batch, key)
                except Exception:  # noqa: BLE001 - the bypass breaks the model at run time: worst score
                    cosines.extend([0.0] * size)
                    worst_rel = math.inf
                    continue
                for r, g in zip(ref, got):
                    for rs, gs_ in _per_sample(r, g, size):
                        d = validate.diff("out", rs, gs_)
                        cosines.append(d.cosine if d.shape_ok and math.isfinite(d.cosine) else 0.0)
                        worst_rel = max(worst_rel, d.max_rel)
            self._cache[(on, key)] = Score(float(np.mean(cosines)), float(np.min(cosines)), float(worst_rel),
                                           len(self._sets[on]))
        return self._cache[(on, key)]

    def close(self) -> None:
        self.session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _per_sample(ref: np.ndarray, got: np.ndarray, n: int):
    """Split batched outputs back into samples when the first axis is the batch."""
    if n > 1 and ref.ndim > 0 and ref.shape[0] == n and got.shape[:1] == ref.shape[:1]:
        return zip(ref, got)
    return [(ref, got)]


def _batches(session, feeds: list[dict[str, np.ndarray]], *, allow: bool = True) -> list[tuple[dict, int]]:
    """(feeds, samples) pairs: consecutive samples of equal shapes are concatenated when every
    model input has a dynamic first axis and each sample is a batch of one."""
    inputs = [i for i in session.get_inputs() if not i.name.startswith(GATE_PREFIX)]
    names = [i.name for i in inputs]
    dynamic = allow and all(i.shape and not isinstance(i.shape[0], int) for i in inputs)
    groups: list[list[dict[str, np.ndarray]]] = []
    for f in feeds:
        sample = {n: f[n] for n in names if n in f}
        last = groups[-1] if groups else None
        if (dynamic and last is not None and len(last) < MAX_BATCH
                and all(last[0][n].shape == sample[n].shape for n in sample)
                and all(sample[n].ndim > 0 and sample[n].shape[0] == 1 for n in sample)):
            last.append(sample)
        else:
            groups.append([sample])
    return [({n: np.concatenate([s[n] for s in g]) for n in g[0]} if len(g) > 1 else g[0], len(g))
            for g in groups]
