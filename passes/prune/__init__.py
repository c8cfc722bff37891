"""prune: remove channels, losslessly by default.

Default (``ratio=0``): a channel group goes when it is provably zero where it leaves the graph's
channel flow (zero weight rows and bias, a BatchNormalization with scale and shift 0, ...), or
provably a constant that every consumer folds exactly into its bias (1x1 or unpadded Conv, Gemm,
MatMul) or, at a padded Conv, into a border term (``border``: a one-channel Conv over a map of
ones, which reproduces the zeros that padding puts around the constant). Outputs do not change
(EXACT). Structured-pruning trainers leave exactly such channels.

``ratio=R``: also remove the least important share R of the channel groups (LOSSY), ranked by
``criterion`` relative to their layer (see ranking.py); with calibration data the removed channels' mean activations are folded
into the next biases, the output error is measured, and ``target=T`` stops at the largest share
whose output cosine stays >= T.

Subgraph bodies (If/Loop/Scan) are analysed as scopes of their own, losslessly; values they read
from the enclosing scope are never cut (a body's signature is fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.errors import UsageError
from onnxopt.pass_base import Numerics, Pass, PassContext, PassResult
from onnxopt.registry import register_pass

from . import calib, cost, ranking, shapes, shrink
from .channels import ChannelAnalysis, analyze, static_shape
from .ops import build_rules


MAX_ROUNDS = 4


@register_pass
class Prune(Pass):
    """Remove provably zero/constant channels (lossless); with ratio, also the least important ones."""

    name = "prune"
    numerics = Numerics.EXACT
    requires = ("toposorted",)   # shapes are inferred on the side: see shapes.py

    @dataclass(frozen=True)
    class Options:
        ratio: float = field(default=0.0, metadata={
            "help": "also remove this share of all channel groups, least important first (lossy)"})
        criterion: Literal["l1", "l2", "bn-scale", "activation"] = field(default="l1", metadata={
            "help": "importance for ratio>0; activation needs --calib"})
        allocation: Literal["global", "layer"] = field(default="global", metadata={
            "help": "global: rank groups across layers relative to their layer's mean; layer: same share everywhere"})
        multiple: int = field(default=16, metadata={
            "help": "with ratio>0: round each layer's kept channels to a multiple of this (fast SIMD kernels); 1: off"})
        target: float | None = field(default=None, metadata={
            "help": "with ratio>0 and --calib: stop before the mean output cosine falls under this"})
        compensate: bool = field(default=True, metadata={
            "help": "with --calib: fold removed channels' mean activation into the next bias"})
        border: bool = field(default=True, metadata={
            "help": "remove constant channels that meet a padded Conv too, adding back their exact "
                    "contribution as a one-channel Conv over ones (false: they stay)"})
        samples: int = field(default=16, metadata={"help": "calibration samples to use"})
        steps: int = field(default=8, metadata={"help": "shares tried between 0 and ratio for target"})

        def __post_init__(self):
            if not 0.0 <= self.ratio < 1.0:
                raise ValueError("ratio must be in [0, 1)")
            if self.target is not None and not -1.0 <= self.target <= 1.0:
                raise ValueError("target is an output cosine, in [-1, 1]")
            if self.samples < 1 or self.steps < 1 or self.multiple < 1:
                raise ValueError("samples, steps and multiple must be >= 1")

    def effective_numerics(self) -> Numerics:
        return Numerics.LOSSY if self.options.ratio > 0 else Numerics.EXACT

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        lossy = opts.ratio > 0
        if lossy and ctx.calib is None and (opts.criterion == "activation" or opts.target is not None):
            need = "criterion=activation" if opts.criterion == "activation" else "target"
            raise UsageError(f"prune: {need} needs calibration data (--calib)")
        rules = build_rules(border=opts.border)
        scopes = list(ir.iter_graphs(graph))
        inferred = shapes.infer(graph, ctx)
        before = _snapshot(scopes)
        params_before, macs_before = cost.graph_params(graph), cost.graph_macs(graph, inferred)
        plan: LossyPlan | None = None
        groups_exact = groups_lossy = 0
        blocked: dict[str, int] = {}
        # Removing channels can free others (a grouped conv left with one group no longer ties
        # its channels together), so lossless rounds repeat until one removes nothing.
        for round_ in range(MAX_ROUNDS):
            removed_any = False
            for k, scope in enumerate(scopes):
                analysis = analyze(scope, ctx.opset, rules, inferred)
                if round_ == 0:
                    for op, n in analysis.blocked_ops.items():
                        blocked[op] = blocked.get(op, 0) + n
                exact = analysis.exact_groups()
                removed, fold = set(exact), None
                if lossy and k == 0 and round_ == 0:
                    plan = self._lossy(scope, ctx, analysis, exact, inferred)
                    removed, fold = plan.removed, plan.fold
                removed = analysis.keep_nonempty(removed)
                if not removed:
                    continue
                groups_exact += len(removed & exact)
                groups_lossy += len(removed - exact)
                shrink.apply(analysis, removed, ctx.opset, fold, shrink.all_names(graph))
                inferred = shapes.infer(graph, ctx)
                removed_any = True
            if not removed_any:
                break
        changed = groups_exact + groups_lossy > 0
        if not changed:
            return PassResult(False, {"blocked_by": blocked} if blocked else {})
        layers = _layer_report(scopes, before)
        stats = {
            "groups_removed": groups_exact + groups_lossy,
            "groups_removed_lossy": groups_lossy,
            "channels_removed": sum(v["channels_removed"] for v in layers.values()),
            "params_before": params_before, "params_after": cost.graph_params(graph),
            "macs_before": macs_before, "macs_after": cost.graph_macs(graph, inferred),
            "layers": layers,
        }
        if blocked:
            stats["blocked_by"] = blocked
        if plan is not None and plan.share is not None:
            stats["share"] = plan.share
        if plan is not None and plan.feeds:
            stats.update(calib.fidelity(plan.reference, calib.export(graph, ctx), plan.feeds))
        return PassResult(True, stats)

    # -- lossy selection -------------------------------------------------------------------------

    def _lossy(self, scope: gs.Graph, ctx: PassContext, analysis: ChannelAnalysis, exact: set[int],
               inferred: dict) -> "LossyPlan":
        opts = self.options
        feeds = calib.samples(scope, ctx, opts.samples)
        activations = calib.exit_activations(scope, ctx, analysis, feeds) if feeds else {}
        score = ranking.importance(analysis, opts.criterion, activations)
        prunable = analysis.prunable_groups()
        fold = _mean_fold(analysis, activations) if opts.compensate and activations else None
        reference = _outputs(calib.export(scope, ctx), feeds) if feeds else []
        chosen = ranking.select(analysis, opts.ratio, score, prunable, exact, opts.allocation, opts.multiple)
        if opts.target is None or not feeds:
            return LossyPlan(exact | chosen, fold, feeds, reference)
        best, share = set(), 0.0
        for step in range(1, opts.steps + 1):
            candidate_share = opts.ratio * step / opts.steps
            candidate = ranking.select(analysis, candidate_share, score, prunable, exact, opts.allocation, opts.multiple)
            ctx.report_progress("prune target", step, opts.steps)
            if self._try(scope, ctx, exact | candidate, activations, feeds, reference, inferred) < opts.target:
                break
            best, share = candidate, candidate_share
        return LossyPlan(exact | best, fold, feeds, reference, share)

    def _try(self, scope, ctx, removed, activations, feeds, reference, inferred) -> float:
        """Output cosine of the scope with ``removed`` cut, on a copy (the analysis is
        deterministic, so group ids match between the graph and its copy)."""
        trial = scope.copy()
        for key in ("onnxopt_types", "onnxopt_type_attrs"):  # what ir.to_proto restores from (see ir.to_graph)
            if key in vars(scope):
                setattr(trial, key, vars(scope)[key])
        analysis = analyze(trial, ctx.opset, build_rules(border=self.options.border), inferred)
        removed = analysis.keep_nonempty(removed)
        fold = _mean_fold(analysis, activations) if self.options.compensate and activations else None
        shrink.apply(analysis, removed, ctx.opset, fold, shrink.all_names(trial))
        return calib.fidelity(reference, calib.export(trial, ctx), feeds)["output_cosine"]


@dataclass
class LossyPlan:
    """What the lossy step chose, and the calibration data to report the resulting error on."""

    removed: set[int]
    fold: dict[int, np.ndarray] | None
    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    share: float | None = None       # with target: the share of groups that kept the cosine


def _mean_fold(analysis: ChannelAnalysis, activations) -> dict[int, np.ndarray]:
    """Exit tensor -> values to fold: the proven constant where known, else the calibration mean."""
    out = {}
    for ex in analysis.exits:
        stats = activations.get(ex.tensor.name)
        if stats is None:
            continue
        values = analysis.tracks[id(ex.tensor)].values
        out[id(ex.tensor)] = np.where(np.isfinite(values), values, stats[1])
    return out


def _outputs(model, feeds):
    from onnxopt import validate

    sess = validate.session(model)
    return [validate.run(sess, f) for f in feeds]


# -- report ----------------------------------------------------------------------------------------

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _snapshot(scopes: list[gs.Graph]) -> dict[int, tuple[str, int, int | None]]:
    """id(node) -> (name, params, output channels) for channel-mixing layers before pruning."""
    snap = {}
    for scope in scopes:
        for node in scope.nodes:
            if node.op in _LAYER_OPS:
                snap[id(node)] = (node.name or node.outputs[0].name, cost.node_params(node), _out_channels(node))
    return snap


def _out_channels(node: gs.Node) -> int | None:
    w = static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or len(w) < 2 or any(d is None for d in w):
        return None
    if node.op == "Conv":
        return int(w[0])
    if node.op == "ConvTranspose":
        return int(w[1]) * int(node.attrs.get("group", 1))
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        return int(w[0])
    return int(w[-1])


def _layer_report(scopes: list[gs.Graph], before: dict) -> dict[str, dict]:
    report = {}
    for scope in scopes:
        for node in scope.nodes:
            old = before.get(id(node))
            if old is None:
                continue
            name, params, channels = old
            params_now, channels_now = cost.node_params(node), _out_channels(node)
            if params_now != params or channels_now != channels:
                report[name] = {"channels": f"{channels}->{channels_now}",
                                "channels_removed": (channels or 0) - (channels_now or 0),
                                "params_removed": params - params_now}
    return report
