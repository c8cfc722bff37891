"""depth: make a model shallower by removing whole residual blocks and transformer layers.

Which blocks go is measured, not guessed: on calibration data each candidate is bypassed in
ONNX Runtime and the one that moves the outputs least is removed; the rest are re-measured with
it gone (greedy), until ``remove=N`` blocks, a ``ratio`` of them, or the output cosine would
fall below ``target``. ``blocks=ID,...`` removes named blocks (ids from ``onnxopt blocks``) and
is the only mode that works without calibration data.

Blocks are searched in the main graph only, not in If/Loop/Scan bodies: a block inside a loop
body runs once per iteration, and dropping it there is a different transformation.

Modules: ``blocks`` (detection, dominator analysis), ``removal`` (graph edit), ``sensitivity``
(ORT measurement), ``selection`` (greedy), ``cost`` (params/MACs), ``listing`` (``blocks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.errors import UsageError
from onnxopt.pass_base import Numerics, Pass, PassContext, PassResult
from onnxopt.registry import register_pass

from .blocks import Block, find_blocks
from .listing import BlockInfo, input_ranks, list_blocks
from .removal import remove_blocks
from .selection import greedy
from .sensitivity import Evaluator, Score

__all__ = ["BlockInfo", "Depth", "list_blocks"]


@register_pass
class Depth(Pass):
    """Remove whole residual blocks / transformer layers, chosen by measured output sensitivity."""

    name = "depth"
    numerics = Numerics.LOSSY
    requires = ("toposorted", "shapes")

    @dataclass(frozen=True)
    class Options:
        remove: int | None = field(default=None, metadata={"help": "remove this many blocks (greedy by sensitivity)"})
        ratio: float | None = field(default=None, metadata={
            "help": "remove this share of the removable blocks (rounded to the nearest count)"})
        target: float | None = field(default=None, metadata={
            "help": "remove blocks while the mean output cosine stays >= this"})
        blocks: tuple[int, ...] | None = field(default=None, metadata={
            "help": "remove exactly these block ids (see `onnxopt blocks`); works without --calib"})
        samples: int = field(default=8, metadata={
            "help": "calibration samples that measure sensitivity (as many more, if present, check the result)"})

        def __post_init__(self):
            given = [k for k in ("remove", "ratio", "target") if getattr(self, k) is not None]
            given += ["blocks"] if self.blocks is not None else []
            if len(given) > 1:
                raise ValueError(f"give only one of remove, ratio, target, blocks (got {', '.join(given)})")
            if self.remove is not None and self.remove < 1:
                raise ValueError(f"remove must be >= 1, got {self.remove}")
            if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
                raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
            if self.target is not None and not -1.0 <= self.target <= 1.0:
                raise ValueError(f"target is a cosine in [-1, 1], got {self.target}")
            if self.blocks is not None and (not self.blocks or any(b < 0 for b in self.blocks)
                                            or len(set(self.blocks)) != len(self.blocks)):
                raise ValueError(f"blocks must be distinct ids >= 0, got {','.join(map(str, self.blocks))}")
            if self.samples < 1:
                raise ValueError(f"samples must be >= 1, got {self.samples}")

    @staticmethod
    def list_blocks(model: onnx.ModelProto | str | Path, calib=None, *, samples: int = 8,
                    shapes: dict[str, tuple[int, ...]] | None = None, progress=None) -> list[BlockInfo]:
        """Candidate blocks (id, kind, op span, params, MACs, sensitivity) for `onnxopt blocks`."""
        return list_blocks(model, calib, samples=samples, shapes=shapes, progress=progress)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        if opts.remove is None and opts.ratio is None and opts.target is None and opts.blocks is None:
            raise UsageError("depth: say what to remove: depth{remove=N}, {ratio=R}, {target=COSINE} "
                             "or {blocks=ID,...}")
        if ctx.calib is None and opts.blocks is None:
            raise UsageError("depth: needs --calib DATA to measure which blocks matter least, or name them "
                             "with depth{blocks=ID,...} (see `onnxopt blocks MODEL`)")
        blocks = find_blocks(graph)
        by_id = {b.id: b for b in blocks}
        stats: dict = {"candidates": len(blocks)}
        if opts.blocks is not None:
            unknown = [b for b in opts.blocks if b not in by_id]
            if unknown:
                raise UsageError(f"depth: no block {','.join(map(str, unknown))}; this model has "
                                 f"{_ids(blocks)} (see `onnxopt blocks MODEL`)")
        if opts.remove is not None and opts.remove > len(blocks):
            raise UsageError(f"depth{{remove={opts.remove}}}: the model has {_ids(blocks)}")
        chosen, deviation = self._choose(graph, ctx, blocks, stats)
        if not chosen:
            return PassResult(changed=False, stats=stats)
        chosen_blocks = [by_id[b] for b in chosen]
        stats["removed_blocks"] = list(chosen)
        stats["removed"] = [f"{b.id}:{b.kind} {b.entry} -> {b.exit}" for b in chosen_blocks]
        stats["nodes_removed"] = remove_blocks(graph, chosen_blocks)
        stats.update(deviation)
        return PassResult(changed=True, stats=stats)

    def _choose(self, graph: gs.Graph, ctx: PassContext, blocks: list[Block], stats: dict):
        """Block ids to remove, in removal order, and the measured output deviation."""
        opts = self.options
        if ctx.calib is None:
            stats["deviation"] = "not measured (no --calib data)"
            return list(opts.blocks), {}
        count = opts.remove if opts.ratio is None else int(opts.ratio * len(blocks) + 0.5)  # ratio: nearest
        if not blocks or count == 0:
            return [], {}
        feeds = ctx.calib.take(input_ranks(graph), 2 * opts.samples)
        evaluator = Evaluator(_export(graph, ctx), blocks, feeds[:opts.samples], holdout=feeds[opts.samples:])
        try:
            if opts.blocks is not None:
                chosen = list(opts.blocks)
            else:
                def progress(done: int, total: int) -> None:
                    ctx.report_progress("depth: sensitivity", done, total)

                steps = greedy([b.id for b in blocks], evaluator.score, count=count, target=opts.target,
                               progress=progress)
                chosen = [s.block for s in steps]
                # the first greedy step scanned every single removal; these are cache hits
                stats["single_removal_cosine"] = {b.id: round(evaluator.score({b.id}).cosine, 6) for b in blocks}
            stats["evaluations"] = evaluator.evaluations
            if not chosen:
                return [], {}
            on = "holdout" if evaluator.has_holdout else "select"
            score = evaluator.score(chosen, on=on)
        finally:
            evaluator.close()
        return chosen, _deviation(score, "held-out samples" if on == "holdout" else "selection samples")


def _deviation(score: Score, where: str) -> dict:
    return {"output_cosine": round(score.cosine, 6), "output_min_cosine": round(score.min_cosine, 6),
            "output_max_rel": round(score.max_rel, 6), "deviation_on": f"{score.samples} {where}"}


def _ids(blocks: list[Block]) -> str:
    if not blocks:
        return "no removable blocks"
    return f"{len(blocks)} removable block{'s' if len(blocks) != 1 else ''} (ids 0-{len(blocks) - 1})"


def _export(graph: gs.Graph, ctx: PassContext) -> onnx.ModelProto:
    """The current graph as a self-contained proto (``ctx.header`` when the framework sets it)."""
    header = getattr(ctx, "header", None)
    if header is None:
        header = onnx.ModelProto()
        header.ir_version = ctx.ir_version or onnx.IR_VERSION
        for domain, version in ctx.opsets.items():
            header.opset_import.add(domain=domain, version=version)
    return ir.to_proto(graph, header)
