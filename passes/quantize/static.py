"""Static int8 quantization, start to finish: prepare, calibrate, select, guard latency, emit."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import ir, validate
from onnxopt.errors import BadInputError, UsageError
from onnxopt.pass_base import PassContext, PassResult

from . import calibration, latency, ops
from .compress import compress_weights, store_half
from .embedding import quantize_embeddings
from .emit import EmitStats, emit
from .evaluate import Evaluator
from .biascorr import weight_input_axis
from .graphutil import const_array, copy_graph, is_float_var
from .opset import QdqFlavor, choose_flavor
from .plan import Plan, Settings, find_candidates, make_plan
from .prepare import prepare
from .report import per_node
from .sensitivity import select

PRODUCTS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
NO_CALIB = ("quantize: static quantization needs calibration data: pass --calib DATA "
            "(.npz keyed by input name), or use quantize{mode=dynamic} or quantize{mode=fp16}")


def header_for(ctx: PassContext) -> onnx.ModelProto:
    if ctx.header is not None:
        return ctx.header
    header = onnx.ModelProto(ir_version=ctx.ir_version or onnx.IR_VERSION)
    header.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in ctx.opsets.items())
    return header


def input_ranks(graph: gs.Graph, model: onnx.ModelProto) -> dict[str, int]:
    ranks = {t.name: len(t.shape) for t in graph.inputs if t.shape is not None}
    if len(ranks) != len(graph.inputs):
        sess = validate.session(model)
        ranks = {i.name: len(i.shape) for i in sess.get_inputs()}
    return ranks


def observed_tensors(graph: gs.Graph) -> list[str]:
    """Float tensors that a quantizable op reads or writes (the only ones worth statistics)."""
    names: dict[str, None] = {}
    for node in graph.nodes:
        if node.op in ops.RULES or node.op in ops.ABSORBABLE:
            for t in list(node.inputs) + list(node.outputs):
                if is_float_var(t):
                    names[t.name] = None
    return list(names)


@dataclass
class Builder:
    """Turns a set of anchors into a quantized model; holds what every candidate shares."""

    graph: gs.Graph
    header: onnx.ModelProto
    flavor: QdqFlavor
    settings: Settings
    ranges: dict[str, tuple[float, float]]
    reduce_range: bool = False
    embeddings: bool = True
    compress: bool = True
    exact: frozenset = frozenset()           # anchors (names) whose weights int8 cannot hold
    excluded: frozenset = frozenset()        # names/op types the user keeps float: untouched
    means: dict | None = None                # per-channel input means: bias correction
    half: frozenset = frozenset()            # ``exact`` anchors whose weights are stored float16
    sizes: dict | None = None                # tensor element counts seen in calibration
    growable: frozenset = frozenset()        # tiny products: int8 only where neighbours are

    def apply(self, graph: gs.Graph, anchors: set[str]) -> tuple[Plan, EmitStats, int, int]:
        """int8 for ``anchors``; int8 storage (float compute) for the weights of every other
        Conv/ConvTranspose/MatMul/Gemm except the ``exact`` ones (float16 storage for ``half``).
        Returns the plan, the emit statistics, and the weights stored int8 and float16."""
        plan = make_plan(graph, find_candidates(graph, self.ranges, self.settings), anchors, self.ranges, self.settings,
                         sizes=self.sizes, growable=self.growable - self.exact)
        stats = emit(graph, plan, self.flavor, pow2=self.settings.pow2, reduce_range=self.reduce_range,
                     activation_dtype=self.settings.activation_dtype, means=self.means)
        stored = halves = 0
        if self.compress:
            floats = [n for n in graph.nodes if n.name not in plan.units and n.op in PRODUCTS
                      and not self._kept(n, self.exact | self.excluded)]
            halved = [n for n in graph.nodes if n.name not in plan.units and n.op in PRODUCTS
                      and n.name in self.half and not self._kept(n, self.excluded)]
            stored = compress_weights(graph, floats, reduce_range=self.reduce_range, means=self.means)
            halves = store_half(graph, halved)
        tables = quantize_embeddings(graph) if self.embeddings else 0
        return plan, stats, tables + stored, halves

    @staticmethod
    def _kept(node: gs.Node, names: frozenset) -> bool:
        return node.name in names or node.op in names

    def __call__(self, anchors: set[str]) -> onnx.ModelProto:
        return self.model_of(copy_graph(self.graph), anchors)

    def model_of(self, graph: gs.Graph, anchors: set[str]) -> onnx.ModelProto:
        """Quantize ``graph`` itself (consumed) and export it."""
        self.apply(graph, anchors)
        return ir.to_proto(graph, self.header)

    def keeping(self, exact) -> "Builder":
        return replace(self, exact=frozenset(exact) | self.exact)


def quantize_static(graph: gs.Graph, ctx: PassContext, o) -> PassResult:
    if ctx.calib is None:
        raise UsageError(NO_CALIB)
    stats: dict = {"mode": "static"}
    prepared = prepare(graph, ctx)
    if prepared:
        stats["prepared"] = prepared
    flavor = choose_flavor(graph, ctx)
    stats["qdq_ops"] = flavor.label
    if flavor.upgraded_from:
        stats["opset_upgraded"] = f"{flavor.upgraded_from} -> {flavor.opset}"
    header = header_for(ctx)
    float_model = ir.to_proto(graph, header)
    ranks = input_ranks(graph, float_model)

    # calibration ------------------------------------------------------------------------------
    names = observed_tensors(graph)
    axes = {}
    if o.bias_correction != "off":
        for node in graph.nodes:
            axis = weight_input_axis(node)
            if axis is not None and len(node.inputs) > 1 and const_array(node.inputs[1]) is not None:
                axes[node.inputs[0].name] = axis
        names += [n for n in axes if n not in set(names)]
    cal = calibration.collect(float_model, names, ctx.calib.samples(ranks), histogram=o.calibration != "minmax",
                              limit=o.samples, progress=ctx.progress, channel_axes=axes)
    means = {n: s.channel_mean() for n, s in cal.stats.items() if s.channel_mean() is not None}
    if cal.samples == 0:
        raise BadInputError("quantize: the calibration data holds no samples")
    stats["calibration"] = {"method": o.calibration, "samples": cal.samples, "tensors": len(names)}
    methods = ("minmax", "percentile") if o.calibration == "auto" else (o.calibration,)
    all_ranges = {m: {n: calibration.choose_range(s, m, o.percentile) for n, s in cal.stats.items() if s.usable}
                  for m in methods}
    extreme = sum(1 for s in cal.stats.values() if s.extreme or s.nonfinite)
    if extreme:
        stats["tensors_left_float_extreme_values"] = extreme
    shapes = {n: s.shape for n, s in cal.stats.items() if s.shape is not None}

    # candidates -------------------------------------------------------------------------------
    settings = Settings(activation_dtype=o.activations, pow2=o.scale == "pow2", enabled_ops=_enabled_ops(o),
                        opset=flavor.opset)
    build = Builder(graph, header, flavor, settings, all_ranges[methods[0]], o.reduce_range, o.embeddings,
                    o.compress, frozenset(), frozenset(o.exclude), means if o.bias_correction != "off" else None,
                    sizes={n: int(np.prod(s)) for n, s in shapes.items()})
    cands = find_candidates(graph, build.ranges, settings)
    kept_float: dict[str, str] = {}
    for name, cand in cands.items():
        if cand.is_anchor and (name in o.exclude or cand.node.op in o.exclude):
            kept_float[name] = "excluded by option"
    if o.latency != "off":
        slow = latency.slow_int8(cands, shapes)
        # a tiny product is not worth an int8 island, but next to int8 neighbours it may join
        # their region (fewer values converted); depthwise stays float: its int8 kernel is slower
        build.growable = frozenset(n for n in slow if n not in kept_float and not latency.is_depthwise(cands[n]))
        for name, reason in slow.items():
            kept_float.setdefault(name, reason)
    anchors = [n for n, c in cands.items() if c.is_anchor and n not in kept_float]
    subgraphs = sum(1 for n in graph.nodes for v in n.attrs.values() if isinstance(v, gs.Graph))
    if subgraphs:
        stats["subgraphs_left_float"] = subgraphs

    # accuracy ---------------------------------------------------------------------------------
    eval_samples = ctx.calib.take(ranks, o.eval_samples)
    evaluator = Evaluator(float_model, eval_samples, o.metric)
    # sensitivity ranking wants a continuous signal: cosine, whatever the target metric
    probe = Evaluator(float_model, eval_samples[: max(1, min(4, len(eval_samples)))], "cosine")
    selectable = set(anchors)
    full = None                    # score with every selectable anchor int8, once it is known
    if len(methods) > 1:  # auto: the calibration method that scores best with every anchor int8
        scores = {}
        for m in methods:
            build.ranges = all_ranges[m]
            scores[m] = evaluator.score(build(selectable))
        best = max(methods, key=lambda m: scores[m].value)
        build.ranges, full = all_ranges[best], scores[best]
        stats["calibration"].update(method=f"auto: {best}", scores={m: round(v.value, 6) for m, v in scores.items()})
    if o.bias_correction == "auto" and means:  # keep it only where it helps this model
        with_bc = full if full is not None else evaluator.score(build(selectable))
        without = evaluator.score(replace(build, means=None)(selectable))
        full = with_bc if with_bc.value >= without.value else without
        if without.value > with_bc.value:
            build = replace(build, means=None)
        stats["bias_correction"] = {"on": round(with_bc.value, 6), "off": round(without.value, 6),
                                    "used": build.means is not None}
    target = o.target if o.target > 0 else -1.0
    if target > 0 and build.compress:
        # anchors the rules keep float (depthwise, tiny) store int8 weights; a model whose
        # weights cannot take 8 bits at all (randomly initialised nets amplify every rounding)
        # keeps them exact instead
        floor = evaluator.score(build.keeping(selectable)(set()))
        if floor.value < target:
            exact_rules = {n for n, c in cands.items() if c.is_anchor and n not in selectable}
            build = build.keeping(exact_rules)
            stats["weights_kept_float"] = f"int8 weights alone score {floor.value:.4f} < target"
    # During selection an anchor left out of the int8 set stays exactly float (no int8 storage
    # either): the selection keeps a node float because it cannot take 8 bits. Anchors the rules
    # keep float for speed (depthwise) keep int8 storage throughout, so scores include it.
    selection = select(anchors, lambda chosen: build.keeping(selectable - set(chosen))(chosen), evaluator,
                       target, ctx.progress, probe, full=full)
    for name in selection.kept_float:
        kept_float[name] = f"sensitive: {o.metric} {1 - selection.sensitivity[name]:.4f} when alone int8"
    chosen = selection.anchors
    stats["score"] = {"metric": o.metric, "target": o.target, "all_int8": round(selection.full_score.value, 6),
                      "chosen": round(selection.score.value, 6)}

    # latency ----------------------------------------------------------------------------------
    if o.latency == "measure" and chosen:
        gains = latency.anchor_gains(graph, cands, sorted(chosen), shapes, header, build.model_of,
                                     threads=o.threads[0], progress=ctx.progress)
        paying = {a for a in chosen if gains.get(a, 0.0) > 0.0}
        exact_build = build.keeping(selectable - chosen)
        g = latency.guard(float_model, exact_build, paying, gains, eval_samples[0], threads=o.threads,
                          progress=ctx.progress)
        for name in chosen - g.anchors:
            kept_float[name] = ("int8 did not pay (measured latency)" if name in paying else
                                f"int8 island slower than float ({gains.get(name, 0.0) * 1e3:+.1f} us)")
        stats["latency_probes"] = len(gains)
        stats["latency"] = g.history
        if g.anchors != chosen:  # anchors int8 did not pay for keep int8 storage, float compute
            stats["score"]["chosen"] = round(evaluator.score(exact_build(g.anchors)).value, 6)
        chosen = g.anchors

    final = build.keeping(selectable - selection.anchors)   # sensitive anchors: exactly float
    sensitive = selectable - selection.anchors
    if sensitive and build.compress and target > 0:
        # int8 storage (float compute) for as many sensitive anchors as the target allows,
        # least sensitive first; bisection as in the selection
        order = sorted(sensitive, key=lambda a: selection.sensitivity.get(a, 1.0))
        lo, hi, best = 1, len(order), None
        while lo <= hi:
            mid = (lo + hi) // 2
            trial = build.keeping(order[mid:])
            s = evaluator.score(trial(chosen))
            if s.value >= target:
                best, lo = (trial, s, mid), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            final = best[0]
            stats["score"]["chosen"] = round(best[1].value, 6)
            for name in order[:best[2]]:
                kept_float[name] += "; int8 weight storage"
    if build.compress:
        final, halved_score = _halve_exact_weights(final, chosen, evaluator, target, selection.sensitivity)
        if halved_score is not None:
            stats["score"]["chosen"] = round(halved_score.value, 6)
        for name in final.half:
            if name in kept_float:
                kept_float[name] += "; float16 weight storage"
    if settings.pow2 and chosen:  # what power-of-two scales cost against float scales
        pow2_score = evaluator.score(final(chosen)).value
        free = replace(final, settings=replace(settings, pow2=False))
        float_score = evaluator.score(free(chosen)).value
        stats["pow2_cost"] = {"metric": o.metric, "pow2_scales": round(pow2_score, 6),
                              "float_scales": round(float_score, 6), "cost": round(float_score - pow2_score, 6)}

    # emit -------------------------------------------------------------------------------------
    plan, es, tables, halves = final.apply(graph, chosen)
    joined = final.growable & set(plan.units)
    for name in joined:
        kept_float.pop(name, None)  # joined its int8 neighbours: reported as int8
    if joined:
        stats["tiny_products_joined_int8"] = len(joined)
    stats["int8_nodes"] = es.quantized_nodes
    stats["int8_anchors"] = len(plan.anchors())
    stats["float_anchors"] = sum(1 for c in cands.values() if c.is_anchor) - len(plan.anchors())
    stats["weights_quantized"] = es.weights_quantized + tables
    if es.biases_corrected:
        stats["biases_corrected"] = es.biases_corrected
    if tables:
        stats["weights_stored_int8_float_compute"] = tables
    if halves:
        stats["weights_stored_fp16_float_compute"] = halves
    if es.bias_values_clipped:
        stats["bias_values_clipped"] = es.bias_values_clipped
    if o.report:
        stats["per_node"] = per_node(float_model, ir.to_proto(graph, header), plan, es.quantized_names,
                                     eval_samples[: min(4, len(eval_samples))], selection.sensitivity, kept_float)
    _forget_intermediate_types(graph)
    changed = bool(prepared) or es.quantized_nodes > 0 or bool(flavor.upgraded_from) or tables > 0
    return PassResult(changed=changed, stats=stats)


def _halve_exact_weights(final: Builder, chosen: set[str], evaluator: Evaluator, target: float,
                         sensitivity: dict[str, float]):
    """float16 storage for the weights still exact, if the target still holds: all at once,
    else one anchor at a time, least sensitive first. Returns the builder and the score it
    reached (None when nothing was scored)."""
    order = sorted(final.exact - final.excluded, key=lambda a: sensitivity.get(a, 1.0))
    if not order:
        return final, None
    everything = replace(final, half=frozenset(order))
    if target <= 0:
        return everything, None
    score = evaluator.score(everything(chosen))
    if score.value >= target:
        return everything, score
    best = None
    for name in order:
        trial = replace(final, half=final.half | {name})
        score = evaluator.score(trial(chosen))
        if score.value >= target:
            final, best = trial, score
    return final, best


def _forget_intermediate_types(graph: gs.Graph) -> None:
    """Drop dtype/shape of intermediate tensors: the rewrite made some stale, ORT re-infers them,
    and for small models their value_info is a visible share of the file."""
    io = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.dtype = None
            t.shape = None


def _enabled_ops(o) -> frozenset:
    if o.ops:
        unknown = [op for op in o.ops if op not in ops.RULES]
        if unknown:
            raise UsageError(f"quantize: ops={','.join(unknown)} has no int8 kernel on ORT's CPU; "
                             f"valid: {', '.join(ops.RULES)}")
        return frozenset(o.ops)
    return frozenset(ops.DEFAULT_OPS)
