"""Calibration: run the float model through ONNX Runtime on the user's data and keep streamed
statistics of every tensor that may be quantized.

Memory stays bounded: each sample's tensors are reduced to a running min/max and, for the
percentile and entropy methods, a fixed-size histogram whose range doubles (merging bin pairs)
when a larger value arrives, so no tensor is ever stored across samples. The first sample is
fetched whole (its intermediate tensors are what ORT itself holds for one inference); when
they exceed the byte budget, later samples are fetched in groups that fit it. Histograms are
fed a strided subset of at most HIST_SAMPLE values per tensor and sample (min/max always see
every value), which keeps calibration cost near one inference per sample.

Tensors holding sentinel values (MiniLM's attention mask adds -3.4e38) or non-finite values
are marked and never quantized: no 8-bit range can hold them and the real values together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx

from onnxopt import validate

EXTREME = 1e30            # |x| beyond this is a sentinel (finfo.min masks), not a value to cover
BINS = 2048
HIST_SAMPLE = 1 << 14


@dataclass
class TensorStats:
    lo: float = math.inf
    hi: float = -math.inf
    count: int = 0
    width: float = 0.0                    # histogram bin width (shared by both signs)
    pos: np.ndarray | None = None         # counts of |x| for x >= 0
    neg: np.ndarray | None = None         # counts of |x| for x < 0
    extreme: bool = False
    nonfinite: bool = False
    shape: tuple[int, ...] | None = None     # last seen shape (for the latency cost model)
    channel_axis: int | None = None           # set to collect per-channel means (bias correction)
    channel_sum: np.ndarray | None = None
    channel_count: int = 0

    def channel_mean(self) -> np.ndarray | None:
        if self.channel_sum is None or not self.channel_count:
            return None
        return self.channel_sum / self.channel_count

    @property
    def usable(self) -> bool:
        return self.count > 0 and not self.extreme and not self.nonfinite

    def update(self, a: np.ndarray, histogram: bool) -> None:
        a = np.asarray(a)
        self.shape = tuple(int(d) for d in a.shape)
        if a.size == 0:
            return
        a = a.astype(np.float32, copy=False).ravel()
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            self.nonfinite = True
            return
        if max(abs(lo), abs(hi)) >= EXTREME:
            self.extreme = True
            return
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.count += a.size
        if self.channel_axis is not None and len(self.shape) > 0:
            self._channels(a.reshape(self.shape))
        if histogram:
            step = -(-a.size // HIST_SAMPLE)
            self._histogram(a[::step] if step > 1 else a, max(abs(lo), abs(hi)))

    def _channels(self, a: np.ndarray) -> None:
        axis = self.channel_axis % a.ndim
        moved = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]).astype(np.float64)
        if self.channel_sum is None or self.channel_sum.shape[0] != moved.shape[1]:
            if self.channel_sum is not None:  # channel count changed between samples: give up
                self.channel_axis = None
                self.channel_sum = None
                return
            self.channel_sum = np.zeros(moved.shape[1])
        self.channel_sum += moved.sum(axis=0)
        self.channel_count += moved.shape[0]

    def _histogram(self, a: np.ndarray, peak: float) -> None:
        if self.pos is None:
            self.pos = np.zeros(BINS, np.int64)
            self.neg = np.zeros(BINS, np.int64)
        if peak > 0 and self.width == 0.0:
            self.width = 2.0 ** math.ceil(math.log2(peak)) / BINS
            if self.width * BINS <= peak:
                self.width *= 2
        while self.width and self.width * BINS <= peak:
            self.pos = _merge_pairs(self.pos)
            self.neg = _merge_pairs(self.neg)
            self.width *= 2
        if not self.width:  # all zeros so far
            self.pos[0] += a.size
            return
        idx = np.minimum((np.abs(a) * (1.0 / self.width)).astype(np.int64), BINS - 1)
        idx += (a < 0) * BINS           # one bincount for both signs
        both = np.bincount(idx, minlength=2 * BINS)
        self.pos += both[:BINS]
        self.neg += both[BINS:]


def _merge_pairs(h: np.ndarray) -> np.ndarray:
    merged = h.reshape(-1, 2).sum(axis=1)
    return np.concatenate([merged, np.zeros(len(h) - len(merged), h.dtype)])


# ---------------------------------------------------------------------------------------------
# ranges from statistics


def choose_range(s: TensorStats, method: str, percentile: float) -> tuple[float, float]:
    lo, hi = min(s.lo, 0.0), max(s.hi, 0.0)
    if method == "minmax" or s.pos is None or not s.width:
        return lo, hi
    if method == "percentile":
        total = float(s.pos.sum() + s.neg.sum())          # histograms hold a subsample
        tail = (1.0 - percentile / 100.0) / 2.0 * total    # each tail loses half the clipped share
        return -min(-lo, _tail_edge(s.neg, s.width, tail)), min(hi, _tail_edge(s.pos, s.width, tail))
    if method == "entropy":
        t = _kl_threshold(s.pos + s.neg, s.width)
        return max(lo, -t), min(hi, t)
    raise ValueError(f"unknown calibration method {method!r}")


def _tail_edge(hist: np.ndarray, width: float, tail: float) -> float:
    """Smallest bin edge with at most ``tail`` values above it."""
    above = np.cumsum(hist[::-1])[::-1]  # above[i] = count in bins >= i
    ok = np.nonzero(above <= tail)[0]
    first = int(ok[0]) if len(ok) else len(hist)
    return first * width


def _kl_threshold(hist: np.ndarray, width: float, levels: int = 128, stride: int = 16) -> float:
    """TensorRT's entropy calibration: the clipping threshold whose 8-bit quantization of the
    |x| histogram diverges least (KL) from the clipped reference distribution."""
    hist = hist.astype(np.float64)
    nonzero = np.nonzero(hist)[0]
    if len(nonzero) == 0:
        return 0.0
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return last * width
    best, best_i = math.inf, last
    for i in range(levels, last + 1, stride):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()
        chunks = np.array_split(hist[:i], levels)
        cand = np.concatenate([
            np.where(c > 0, c.sum() / max(np.count_nonzero(c), 1), 0.0) for c in chunks])
        p = ref / ref.sum()
        q = cand / cand.sum() if cand.sum() else cand
        mask = p > 0
        if np.any(q[mask] == 0):
            q = np.where(mask & (q == 0), 1e-12, q)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best:
            best, best_i = kl, i
    return best_i * width


# ---------------------------------------------------------------------------------------------
# running the model


@dataclass
class Calibration:
    stats: dict[str, TensorStats] = field(default_factory=dict)
    samples: int = 0
    runs: int = 0


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """The model with extra graph outputs (untyped: ORT infers them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def collect(model: onnx.ModelProto, names: list[str], samples: Iterable[dict[str, np.ndarray]], *,
            histogram: bool, limit: int | None, progress: Callable[[str, int, int], None] | None = None,
            budget_bytes: int = 256 << 20, channel_axes: dict[str, int] | None = None) -> Calibration:
    """Statistics of ``names`` over the samples (at most ``limit``), streamed; per-channel means
    along ``channel_axes[name]`` where given."""
    cal = Calibration({n: TensorStats(channel_axis=(channel_axes or {}).get(n)) for n in names})
    chunks: list[list[str]] | None = None
    sessions: dict[int, object] = {}

    def session_for(key: int, group: list[str]):
        if key not in sessions:
            sessions[key] = validate.session(with_outputs(model, group))
        return sessions[key]

    for k, feeds in enumerate(samples):
        if limit is not None and k >= limit:
            break
        if chunks is None:
            sizes: dict[str, int] = {}
            outs = _run(session_for(-1, names), names, feeds)
            cal.runs += 1
            for name, value in zip(names, outs):
                sizes[name] = int(getattr(value, "nbytes", 0))
                _update(cal.stats[name], value, histogram)
            del outs
            chunks = _group(names, sizes, budget_bytes)
            if len(chunks) == 1:
                sessions[0] = sessions.pop(-1)
            else:
                sessions.clear()
        else:
            for j, group in enumerate(chunks):
                outs = _run(session_for(j, group), group, feeds)
                cal.runs += 1
                for name, value in zip(group, outs):
                    _update(cal.stats[name], value, histogram)
                del outs
        cal.samples += 1
        if progress is not None:
            progress("calibrate", cal.samples, limit or 0)
    return cal


def _run(sess, names: list[str], feeds: dict[str, np.ndarray]):
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(names, {k: v for k, v in feeds.items() if k in wanted})


def _update(stats: TensorStats, value, histogram: bool) -> None:
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        stats.update(value, histogram)


def _group(names: list[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name in names:
        size = sizes.get(name, 0)
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        groups.append(current)
    return groups
