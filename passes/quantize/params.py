"""Scales and zero points: asymmetric 8-bit activations, symmetric per-channel int8 weights,
int32 biases, and optional power-of-two scales for fixed-point targets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SCALE = 1e-8           # a dead tensor (range 0) still needs a usable, positive scale
INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: str  # "uint8" | "int8"

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127

    def np_dtype(self):
        return np.uint8 if self.dtype == "uint8" else np.int8

    def representable(self) -> tuple[float, float]:
        return ((self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale)


def pow2_ceil(x: float) -> float:
    return float(2.0 ** math.ceil(math.log2(x)))


def activation_params(lo: float, hi: float, dtype: str = "uint8", *, pow2: bool = False,
                      symmetric: bool = False) -> QParams:
    """Affine parameters covering [lo, hi] (always including 0, so zero is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    if symmetric:
        bound = max(abs(lo), abs(hi))
        if dtype == "uint8":
            lo, hi = -bound, bound
        else:
            scale = max(bound / 127.0, MIN_SCALE)
            scale = pow2_ceil(scale) if pow2 else scale
            return QParams(float(np.float32(scale)), 0, dtype)
    scale = max((hi - lo) / (qmax - qmin), MIN_SCALE)
    if pow2:
        scale = pow2_ceil(scale)
    scale = float(np.float32(scale))
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QParams(scale, zero_point, dtype)


def makes_redundant(p: QParams, op: str, clip_lo: float | None, clip_hi: float | None) -> bool:
    """ORT's IsClipMadeRedundantByQ: a Relu/Clip before this Q may be dropped."""
    if op == "Relu":
        return p.zero_point == p.qmin
    lo = -np.inf if clip_lo is None else clip_lo
    hi = np.inf if clip_hi is None else clip_hi
    q_lo = -np.inf if np.isinf(lo) else int(np.rint(np.float32(lo) / np.float32(p.scale))) + p.zero_point
    q_hi = np.inf if np.isinf(hi) else int(np.rint(np.float32(hi) / np.float32(p.scale))) + p.zero_point
    return q_lo <= p.qmin and q_hi >= p.qmax


def weight_params(w: np.ndarray, axis: int | None, *, pow2: bool = False, reduce_range: bool = False,
                  min_scale: np.ndarray | float | None = None):
    """Symmetric int8 weights: per-channel along ``axis`` (None: one scale). Returns (q, scales).

    ``min_scale`` keeps a channel's scale large enough for its int32 bias (a channel with tiny
    weights and a large bias would otherwise overflow int32 at scale s_x * s_w)."""
    qmax = 63 if reduce_range else 127
    w = np.asarray(w, np.float32)
    if axis is None:
        bound = np.array(np.max(np.abs(w)) if w.size else 0.0, np.float64)
    else:
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        bound = np.max(np.abs(moved), axis=1).astype(np.float64) if moved.size else np.zeros(w.shape[axis])
    scale = np.maximum(bound / qmax, MIN_SCALE)
    if min_scale is not None:
        scale = np.maximum(scale, np.asarray(min_scale, np.float64).reshape(scale.shape) if np.ndim(min_scale) else min_scale)
    if pow2:
        scale = 2.0 ** np.ceil(np.log2(scale))
    scale = scale.astype(np.float32)
    shaped = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    q = np.clip(np.rint(w / shaped), -qmax, qmax).astype(np.int8)
    return q, scale


def bias_min_weight_scale(b: np.ndarray, input_scale: float, headroom: float = 0.5) -> np.ndarray:
    """Smallest weight scale per channel at which ``b`` fits int32 (with headroom for the sum)."""
    return np.abs(np.asarray(b, np.float64)) / (float(input_scale) * INT32_LIMIT * headroom)


def bias_params(b: np.ndarray, input_scale: float, weight_scales: np.ndarray):
    """int32 bias at scale s_x * s_w (what QLinearConv/QGemm add into the accumulator)."""
    scale = (np.float32(input_scale) * np.asarray(weight_scales, np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, b.shape).astype(np.float32) if scale.ndim else np.full(b.shape, scale, np.float32)
    scale = np.maximum(scale, np.float32(1e-30))
    q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
    clipped = int(np.sum(np.abs(q) > INT32_LIMIT))
    return np.clip(q, -INT32_LIMIT, INT32_LIMIT).astype(np.int32), scale, clipped


def constant_params(values: np.ndarray, dtype: str, *, pow2: bool = False) -> QParams:
    """A float constant operand of Add/Mul, quantized like an activation over its own range."""
    v = np.asarray(values, np.float32)
    return activation_params(float(v.min()) if v.size else 0.0, float(v.max()) if v.size else 0.0, dtype, pow2=pow2)


def quantize_array(values: np.ndarray, p: QParams) -> np.ndarray:
    q = np.rint(np.asarray(values, np.float32) / np.float32(p.scale)) + p.zero_point
    return np.clip(q, p.qmin, p.qmax).astype(p.np_dtype())
