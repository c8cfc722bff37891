"""Numerics in ONNX Runtime: reference runs and output comparison.

Checks run ORT with graph optimizations off, so they test our rewrite, not ORT's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import BadInputError

ORT_MAX_PROTO = 2_000_000_000


def _ort():
    import onnxruntime as ort  # imported lazily: `onnxopt passes` should not pay for it
    ort.set_default_logger_severity(3)
    return ort


def session(model: onnx.ModelProto | str | Path, *, optimize: bool = False, threads: int = 0,
            providers: list[str] | None = None, spinning: bool = True):
    """An ORT session on a proto or a path; optimizations off unless asked for.

    ``spinning=False``: the session's worker threads sleep when a run ends instead of
    busy-waiting for the next one. Needed wherever several sessions run interleaved: one
    session's spinning workers take the cores the next session runs on (measured at 2 threads
    on 2 cores: a model ran 1.3x or 0.5x its neighbour depending only on which ran second)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() > ORT_MAX_PROTO:
            raise BadInputError("model is too large to hand to ONNX Runtime in memory; save it first")
        return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    return ort.InferenceSession(str(model), so, providers=providers)


# ---------------------------------------------------------------------------------------------
# inputs

def _input_signature(sess) -> list[tuple[str, str, list]]:
    return [(i.name, i.type, list(i.shape)) for i in sess.get_inputs()]


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.str_,
}


def concrete_shape(name: str, dims: list, shapes: dict[str, tuple[int, ...]] | None) -> tuple[int, ...]:
    """Pin symbolic dims: user-given shape first, else 1 for the batch axis and a small size elsewhere."""
    if shapes and name in shapes:
        given = tuple(shapes[name])
        if len(given) != len(dims):
            raise BadInputError(f"--shape {name}: rank {len(given)} but the model input has rank {len(dims)}")
        return given
    out = []
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif axis == 0:
            out.append(1)
        else:
            out.append(64 if len(dims) == 4 else 16)
    return tuple(out)


def random_inputs(model, shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs from the model's signature; integers stay small so they are valid indices."""
    sess = model if hasattr(model, "get_inputs") else session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, type_str, dims in _input_signature(sess):
        dtype = _ORT_TYPES.get(type_str)
        if dtype is None:
            raise BadInputError(f"input '{name}' has type {type_str}; give --inputs data for it")
        shape = concrete_shape(name, dims, shapes)
        if dtype in (np.float32, np.float64, np.float16):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[name] = np.asarray(rng.random(shape) < 0.5)
        elif dtype is np.str_:
            feeds[name] = np.array(rng.choice(["a", "bc", "def"], size=shape), dtype=object)
        else:
            feeds[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    outputs = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outputs))


# ---------------------------------------------------------------------------------------------
# comparison

@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    mismatch: float          # share of elements outside atol + rtol*|ref|
    shape_ok: bool = True

    def ok(self, tol: float) -> bool:
        # Below an absolute floor of tol/100 a difference is float noise even when the output
        # itself is tiny (a sigmoid map near 0 on random inputs), where max_rel would explode.
        return self.shape_ok and (self.max_rel <= tol or self.max_abs <= tol * 1e-2)


@dataclass
class Report:
    outputs: list[OutputDiff] = field(default_factory=list)
    tol: float = 1e-5
    samples: int = 0

    @property
    def ok(self) -> bool:
        return all(o.ok(self.tol) for o in self.outputs)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "tol": self.tol, "samples": self.samples,
                "outputs": [asdict(o) for o in self.outputs]}


def diff(name: str, ref: np.ndarray, got: np.ndarray, rtol: float = 1e-3, atol: float = 1e-5) -> OutputDiff:
    """Per-output figures. Relative error is max|a-b| / max|ref| (scale-aware, robust to zeros)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return OutputDiff(name, math.inf, math.inf, 0.0, 1.0, shape_ok=False)
    if ref.size == 0:
        return OutputDiff(name, 0.0, 0.0, 1.0, 0.0)
    if ref.dtype.kind in "OUSb":
        bad = float(np.mean(ref != got))
        return OutputDiff(name, bad, bad, 1.0 - bad, bad)
    a, b = ref.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    delta = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    delta = np.where(np.isnan(delta), np.inf, delta)
    finite = np.isfinite(a)
    scale = float(np.max(np.abs(a[finite]))) if finite.any() else 1.0
    max_abs = float(np.max(delta))
    max_rel = max_abs / max(scale, 1e-6)
    mismatch = float(np.mean(delta > atol + rtol * np.abs(np.where(finite, a, 0.0))))
    af, bf = np.where(np.isfinite(a), a, 0.0).ravel(), np.where(np.isfinite(b), b, 0.0).ravel()
    na, nb = np.linalg.norm(af), np.linalg.norm(bf)
    cosine = float(af @ bf / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return OutputDiff(name, max_abs, max_rel, cosine, mismatch)


def compare_outputs(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], tol: float) -> Report:
    """Merge per-sample diffs into one worst-case figure per output."""
    report = Report(tol=tol, samples=len(ref))
    worst: dict[str, OutputDiff] = {}
    for r, g in zip(ref, got):
        for name, value in r.items():
            d = diff(name, value, g[name]) if name in g else OutputDiff(name, math.inf, math.inf, 0.0, 1.0, False)
            prev = worst.get(name)
            if prev is None:
                worst[name] = d
            else:
                worst[name] = OutputDiff(name, max(prev.max_abs, d.max_abs), max(prev.max_rel, d.max_rel),
                                         min(prev.cosine, d.cosine), max(prev.mismatch, d.mismatch),
                                         prev.shape_ok and d.shape_ok)
    report.outputs = list(worst.values())
    return report


def reference_outputs(model: onnx.ModelProto | str | Path, feeds: list[dict[str, np.ndarray]]):
    sess = session(model)
    return [run(sess, f) for f in feeds]


def input_ranks(sess) -> dict[str, int]:
    return {i.name: len(i.shape) for i in sess.get_inputs()}


def feeds_for(sess, data=None, shapes=None, samples: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """User data when given (up to ``samples``), else seeded random inputs from the signature."""
    if data is not None:
        feeds = data.take(input_ranks(sess), samples)
        if not feeds:
            raise BadInputError("input data holds no samples")
        return feeds
    return [random_inputs(sess, shapes, seed=seed + k) for k in range(samples)]


def compare(a, b, *, data=None, shapes=None, tol: float = 1e-3, samples: int = 3, seed: int = 0) -> Report:
    """Run two models (protos or paths) on the same inputs and diff every output (ORT, no graph opts)."""
    try:
        sa, sb = session(a), session(b)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT's load errors are the input's fault here
        raise BadInputError(f"ONNX Runtime cannot load the model: {str(exc).strip().splitlines()[0][:300]}") from None
    names_a = [o.name for o in sa.get_outputs()]
    names_b = [o.name for o in sb.get_outputs()]
    if names_a != names_b:
        raise BadInputError(f"the models have different outputs: {names_a} vs {names_b}")
    feeds = feeds_for(sa, data, shapes, samples, seed)
    try:
        ref = [run(sa, f) for f in feeds]
        got = [run(sb, f) for f in feeds]
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(f"ONNX Runtime failed to run: {str(exc).strip().splitlines()[0][:300]}") from None
    return compare_outputs(ref, got, tol)
