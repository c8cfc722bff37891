"""Per-node error report: which layer drifted, and by how much.

For every int8 unit the float model's value of its output tensor is compared with what the
quantized model hands downstream (the 8-bit tensor dequantized with its own parameters, or
the float output of MatMulIntegerToFloat/QGemm). The drift accumulates along the graph, so
the first node where it jumps is the one to look at; ``sensitivity`` (from the selection, when
it ran) is the model-output damage of quantizing that node alone. Runs with ORT's graph
optimizations off, where Q/DQ execute literally, so every tensor is observable.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt import validate

from .calibration import with_outputs
from .evaluate import _metric
from .plan import Plan


def per_node(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, plan: Plan,
             quantized_names: dict[str, str], samples: list[dict[str, np.ndarray]],
             sensitivity: dict[str, float] | None = None, kept_float: dict[str, str] | None = None) -> list[dict]:
    pairs = []  # (node, op, float tensor, tensor in quantized model, params or None)
    for name, unit in plan.units.items():
        out = unit.out.name
        if unit.quantize_output and out in quantized_names:
            pairs.append((name, unit.cand.node.op, out, quantized_names[out], plan.params[out]))
        else:
            pairs.append((name, unit.cand.node.op, out, out, None))
    rows: list[dict] = []
    if pairs and samples:
        fs = validate.session(with_outputs(float_model, [p[2] for p in pairs]))
        qs = validate.session(with_outputs(quant_model, [p[3] for p in pairs]))
        cos = {p[0]: [] for p in pairs}
        rel = {p[0]: 0.0 for p in pairs}
        for feeds in samples:
            fv = dict(zip([p[2] for p in pairs], _run(fs, [p[2] for p in pairs], feeds)))
            qv = dict(zip([p[3] for p in pairs], _run(qs, [p[3] for p in pairs], feeds)))
            for node, _, fname, qname, params in pairs:
                ref = fv[fname]
                got = qv[qname]
                if params is not None:
                    got = (got.astype(np.float32) - params.zero_point) * np.float32(params.scale)
                cos[node].append(_metric(ref, got, "cosine"))
                scale = float(np.max(np.abs(ref))) if ref.size else 0.0
                err = float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size and ref.shape == got.shape else float("inf")
                rel[node] = max(rel[node], err / max(scale, 1e-12))
        for node, op, fname, _, params in pairs:
            row = {"node": node, "op": op, "int8": True, "tensor": fname,
                   "cosine": round(float(np.mean(cos[node])), 6), "max_rel": round(rel[node], 6)}
            if params is not None:
                row["scale"] = params.scale
                row["zero_point"] = params.zero_point
            if sensitivity and node in sensitivity:
                row["sensitivity"] = round(sensitivity[node], 6)
            rows.append(row)
    for node, reason in (kept_float or {}).items():
        row = {"node": node, "int8": False, "reason": reason}
        if sensitivity and node in sensitivity:
            row["sensitivity"] = round(sensitivity[node], 6)
        rows.append(row)
    return rows


def _run(sess, names, feeds):
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
