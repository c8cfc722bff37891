"""Scoring a candidate model against the float model on calibration samples, in ORT as shipped
(graph optimizations on, so the int8 kernels ORT actually picks are the ones measured).

Metrics (higher is better, 1.0 = identical):
  auto    top1 for outputs that look like probabilities (non-negative, summing to 1 over the
          last axis: classifiers, CTC), cosine for everything else (maps, embeddings, logits)
  cosine  mean over samples of the worst output's cosine similarity
  top1    share of argmax positions (last axis) that agree, worst output
  sqnr    signal-to-quantization-noise ratio in dB, mapped to 1 - 10^(-sqnr/10)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt import validate


@dataclass
class Score:
    value: float
    per_output: dict[str, float]


def score_outputs(refs: list[dict[str, np.ndarray]], gots: list[dict[str, np.ndarray]], metric: str) -> Score:
    per_output: dict[str, list[float]] = {}
    for ref, got in zip(refs, gots):
        for name, r in ref.items():
            if not isinstance(r, np.ndarray) or r.dtype.kind != "f":
                continue
            per_output.setdefault(name, []).append(_metric(r, got[name], metric))
    agg = {k: float(np.mean(v)) for k, v in per_output.items()}
    return Score(min(agg.values()) if agg else 1.0, agg)


def is_probabilities(r: np.ndarray) -> bool:
    r = np.asarray(r)
    if r.ndim == 0 or r.shape[-1] < 2 or r.size == 0 or np.min(r) < 0:
        return False
    return bool(np.allclose(np.sum(r, axis=-1, dtype=np.float64), 1.0, atol=1e-3))


def _metric(r: np.ndarray, g: np.ndarray, metric: str) -> float:
    if metric == "auto":
        metric = "top1" if is_probabilities(r) else "cosine"
    r = np.asarray(r, np.float64)
    g = np.asarray(g, np.float64)
    if r.shape != g.shape:
        return 0.0
    if metric == "top1":
        if r.ndim == 0 or r.shape[-1] < 2:
            return _metric(r, g, "cosine")
        return float(np.mean(r.argmax(-1) == g.argmax(-1)))
    finite = np.isfinite(r) & np.isfinite(g)
    r, g = np.where(finite, r, 0.0).ravel(), np.where(finite, g, 0.0).ravel()
    if metric == "sqnr":
        noise = float(np.sum((r - g) ** 2))
        signal = float(np.sum(r ** 2))
        return 1.0 if noise == 0 else float(1.0 - min(1.0, noise / max(signal, 1e-30)))
    # plain reductions, not BLAS: BLAS threads fight ORT's for the same cores
    nr, ng = float(np.sqrt(np.sum(r * r))), float(np.sqrt(np.sum(g * g)))
    if nr == 0 or ng == 0:
        return 1.0 if nr == ng else 0.0
    return float(np.sum(r * g)) / (nr * ng)


class Evaluator:
    """Reference outputs of the float model, computed once; scores candidates against them."""

    def __init__(self, float_model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], metric: str):
        self.samples = samples
        self.metric = metric
        sess = validate.session(float_model)
        self.refs = [validate.run(sess, f) for f in samples]
        self.evaluations = 0

    def outputs(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        sess = validate.session(model, optimize=True)
        return [validate.run(sess, f) for f in self.samples]

    def score(self, model: onnx.ModelProto) -> Score:
        self.evaluations += 1
        return score_outputs(self.refs, self.outputs(model), self.metric)
