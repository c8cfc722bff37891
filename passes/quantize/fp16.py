"""float16 conversion that keeps the model's input and output types.

Each default-domain node runs in float16 when its schema lets the float inputs/outputs be
float16 (inputs fixed to tensor(float), like Resize's scales, stay float32). Casts go where a
float16 producer meets a float32 consumer and at the graph outputs. Subgraph bodies
(If/Loop/Scan) stay float32, and so do the outer tensors they read. Where calibration data is
given, nodes whose tensors exceed float16's safe range (|x| > 30000, e.g. attention-mask
sentinels or large pre-activation sums) stay float32: silent overflow to inf is how float16
conversions break models. Constants are stored in float16 where every user takes float16.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.pass_base import PassContext, PassResult
from onnxopt.rewrite import outer_inputs, subgraphs_of

from . import calibration
from .graphutil import Namer, const_array
from .prepare import prepare

SAFE = 30000.0          # beyond this a float32 value is too close to float16's 65504
F16_CONSTANT_MAX = 65504.0
# Ops whose float16 CPU kernels are missing or numerically fragile: kept float32.
KEEP_FLOAT32 = {"Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                "Multinomial", "EyeLike", "ConstantOfShape", "Constant", "Cast", "CastLike",
                "Loop", "If", "Scan", "Pow", "ReduceSumSquare", "ReduceLogSumExp", "Exp", "Softplus"}


def _float_slots(node: gs.Node, opset: int):
    """(input indices, output indices) whose type variable admits float16, or None if unknown."""
    try:
        schema = onnx.defs.get_schema(node.op, opset, node.domain or "")
    except Exception:  # noqa: BLE001 - unknown op / domain
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def slots(formals, count):
        out = []
        for i in range(count):
            formal = formals[min(i, len(formals) - 1)] if formals else None
            if formal is None:
                return None
            types = allowed.get(formal.type_str, {formal.type_str})
            if "tensor(float16)" in types and "tensor(float)" in types:
                out.append(i)
        return out

    ins = slots(list(schema.inputs), len(node.inputs))
    outs = slots(list(schema.outputs), len(node.outputs))
    if ins is None or outs is None:
        return None
    return ins, outs


def convert_fp16(graph: gs.Graph, ctx: PassContext, o) -> PassResult:
    stats: dict = {"mode": "fp16"}
    prepared = prepare(graph, ctx)
    if prepared:
        stats["prepared"] = prepared
    hot = _hot_tensors(graph, ctx, o, stats)
    # subgraph bodies stay float32 and read outer tensors by name: those keep float32 too
    captured = {t.name for node in graph.nodes for sub in subgraphs_of(node) for t in outer_inputs(sub)}
    namer = Namer(graph)
    f16: set[str] = set()          # float tensors now carrying float16
    converted: list[gs.Node] = []
    for node in graph.nodes:
        if (node.domain or "") not in ("", "ai.onnx") or node.op in KEEP_FLOAT32:
            continue
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        slots = _float_slots(node, ctx.opset)
        if slots is None or not slots[1]:
            continue
        if any(t.name in hot for t in list(node.inputs) + list(node.outputs)):
            continue
        if any(t.name in captured for t in node.outputs):
            continue
        converted.append(node)
        node.onnxopt_fp16 = slots  # per-node scratch, removed below
    casts: dict[tuple[str, int], gs.Variable] = {}

    def cast(t: gs.Tensor, to_f16: bool) -> gs.Tensor:
        key = (t.name, 10 if to_f16 else 1)
        if key not in casts:
            out = gs.Variable(namer(f"{t.name}_{'fp16' if to_f16 else 'fp32'}"),
                              dtype=np.float16 if to_f16 else np.float32)
            graph.nodes.append(gs.Node("Cast", namer(f"{t.name}_Cast"), {"to": key[1]}, inputs=[t], outputs=[out]))
            casts[key] = out
        return casts[key]

    constants: dict[str, gs.Constant] = {}
    for node in converted:
        ins, outs = node.onnxopt_fp16
        for i in outs:
            t = node.outputs[i]
            if isinstance(t, gs.Variable) and t.name and (t.dtype is None or np.dtype(t.dtype) == np.float32):
                t.dtype = np.float16
                f16.add(t.name)
    for node in list(graph.nodes):
        slots = getattr(node, "onnxopt_fp16", None)
        want = set(slots[0]) if slots else set()
        for i, t in enumerate(list(node.inputs)):
            if not t.name:
                continue
            if isinstance(t, gs.Constant):
                v = const_array(t)
                if v is None or v.dtype != np.float32 or i not in want:
                    continue
                if np.max(np.abs(v), initial=0.0) > F16_CONSTANT_MAX:
                    node.inputs[i] = cast(t, True)
                    continue
                if t.name not in constants:
                    constants[t.name] = gs.Constant(namer(f"{t.name}_fp16"), v.astype(np.float16))
                node.inputs[i] = constants[t.name]
            elif i in want and t.name not in f16 and (t.dtype is None or np.dtype(t.dtype) == np.float32):
                node.inputs[i] = cast(t, True)
            elif i not in want and t.name in f16:
                node.inputs[i] = cast(t, False)
    for k, t in enumerate(list(graph.outputs)):
        if t.name in f16:
            # the graph output keeps its name and float32 type: the producer writes a float16 twin
            prod = t.inputs[0]
            twin = gs.Variable(namer(f"{t.name}_fp16"), dtype=np.float16)
            prod.outputs[list(prod.outputs).index(t)] = twin
            for user in list(t.outputs):
                user.inputs[[j for j, x in enumerate(user.inputs) if x is t][0]] = twin
            t.dtype = np.float32
            graph.nodes.append(gs.Node("Cast", namer(f"{t.name}_Cast"), {"to": 1}, inputs=[twin], outputs=[t]))
    for node in converted:
        del node.onnxopt_fp16
    graph.cleanup(remove_unused_graph_inputs=False)
    graph.toposort()
    stats.update(nodes_fp16=len(converted), casts=len(casts), constants_fp16=len(constants),
                 kept_float32_range=len(hot))
    return PassResult(True, stats)


def _hot_tensors(graph: gs.Graph, ctx: PassContext, o, stats: dict) -> set[str]:
    """Tensors whose calibrated magnitude does not fit float16 comfortably."""
    if ctx.calib is None:
        stats["range_check"] = "none (no --calib data): float16 overflow is not guarded"
        return set()
    from .static import header_for, input_ranks
    model = ir.to_proto(graph, header_for(ctx))
    names = [t.name for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.name
             and (t.dtype is None or np.dtype(t.dtype) == np.float32)]
    cal = calibration.collect(model, names, ctx.calib.samples(input_ranks(graph, model)), histogram=False,
                              limit=o.samples, progress=ctx.progress)
    stats["range_check"] = f"{cal.samples} calibration samples"
    return {n for n, s in cal.stats.items()
            if s.extreme or s.nonfinite or (s.count and max(abs(s.lo), abs(s.hi)) > SAFE)}
