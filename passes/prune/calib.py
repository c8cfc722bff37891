"""Calibration data for lossy pruning: per-channel activation statistics at the exits (for the
``activation`` ranking and for folding a removed channel's mean into the next bias), and output
fidelity of a candidate against the unpruned graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import validate
from onnxopt.pass_base import PassContext

from .channels import ChannelAnalysis
from .shapes import export




def samples(graph: gs.Graph, ctx: PassContext, limit: int) -> list[dict[str, np.ndarray]]:
    if ctx.calib is None:
        return []
    ranks = {t.name: len(t.shape) for t in graph.inputs if t.shape is not None}
    return ctx.calib.take(ranks, limit)


def exit_activations(graph: gs.Graph, ctx: PassContext, analysis: ChannelAnalysis,
                     feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Exit tensor name -> (mean |x|, mean x) per position along its channel axis."""
    tensors = {id(ex.tensor): ex.tensor for ex in analysis.exits}
    if not tensors or not feeds:
        return {}
    model = export(graph, ctx)
    have = {o.name for o in model.graph.output}
    for t in tensors.values():
        if t.name not in have:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)) if t.dtype is not None else onnx.TensorProto.FLOAT
            model.graph.output.append(onnx.helper.make_tensor_value_info(t.name, elem, None))
    sess = validate.session(model)
    sums: dict[int, list[np.ndarray]] = {}
    for feed in feeds:
        result = validate.run(sess, feed)
        for tid, t in tensors.items():
            track = analysis.tracks[tid]
            x = np.moveaxis(np.asarray(result[t.name], dtype=np.float64), track.axis, 0).reshape(track.size, -1)
            acc = sums.setdefault(tid, [np.zeros(track.size), np.zeros(track.size)])
            acc[0] += np.abs(x).mean(axis=1)
            acc[1] += x.mean(axis=1)
    n = len(feeds)
    return {tensors[tid].name: (a / n, m / n) for tid, (a, m) in sums.items()}


def fidelity(reference: list[dict[str, np.ndarray]], model: onnx.ModelProto,
             feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Output cosine against the reference (per sample, the worst output; mean and worst over
    samples) and the worst max relative error."""
    sess = validate.session(model)
    cosines, worst_rel = [], 0.0
    for ref, feed in zip(reference, feeds):
        got = validate.run(sess, feed)
        diffs = [validate.diff(name, value, got[name]) for name, value in ref.items()]
        cosines.append(min(d.cosine for d in diffs))
        worst_rel = max([worst_rel] + [d.max_rel for d in diffs])
    return {"output_cosine": float(np.mean(cosines)), "output_cosine_min": float(np.min(cosines)),
            "output_max_rel": worst_rel}
