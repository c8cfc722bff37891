"""Latency in ONNX Runtime as shipped (default graph optimizations), reported as data.

Candidates are timed interleaved, round by round, so machine noise hits all of them alike;
compare medians and ratios, never single runs. The order inside a round is shuffled (seeded):
with a fixed order the model that always runs right after a large one pays for the caches the
large one evicted (measured: 3-6% on an int8 ResNet-50 timed right after its fp32 original).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from . import validate
from .errors import BadInputError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class Stats:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int
    throughput_per_s: float
    batch: int
    ort_version: str
    provider: str
    threads: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise BadInputError(f"unknown device '{device}' (use cpu or cuda)")
    wanted = PROVIDERS[device]
    if wanted not in ort.get_available_providers():
        raise BadInputError(f"--device {device}: this onnxruntime ({ort.__version__}) has no {wanted}; "
                            "install onnxruntime-gpu on a machine with an NVIDIA GPU")
    return [wanted] + (["CPUExecutionProvider"] if device != "cpu" else [])


def model_sha256(model: onnx.ModelProto | str | Path) -> str:
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    digest = hashlib.sha256()
    with open(model, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _session(model, threads: int, device: str, spinning: bool = True):
    providers = providers_for(device)
    sess = validate.session(model, optimize=True, threads=threads, providers=providers, spinning=spinning)
    if sess.get_providers()[0] != providers[0]:
        raise BadInputError(f"--device {device}: {providers[0]} is installed but could not start "
                            "(no usable GPU or CUDA libraries); nothing was measured")
    return sess


def _stats(times: list[float], warmup: int, batch: int, threads: int, provider: str, sha: str) -> Stats:
    import onnxruntime as ort

    ms = sorted(t * 1e3 for t in times)
    median = statistics.median(ms)
    return Stats(median_ms=median, p90_ms=float(np.percentile(ms, 90)), mean_ms=statistics.fmean(ms),
                 min_ms=ms[0], runs=len(ms), warmup=warmup, throughput_per_s=batch * 1e3 / median if median else 0.0,
                 batch=batch, ort_version=ort.__version__, provider=provider, threads=threads, sha256=sha)


def round_orders(labels: list, seed: int = 0):
    """An endless, reproducible stream of shuffled orders: no model always follows the same one."""
    rng = np.random.default_rng(seed)
    while True:
        yield [labels[i] for i in rng.permutation(len(labels))]


def measure(models: dict[str, onnx.ModelProto | str | Path], feeds: dict[str, np.ndarray], *,
            threads: int = 0, device: str = "cpu", warmup: int = 5, runs: int = 30,
            min_seconds: float = 0.0, sessions: int = 1, progress=None) -> dict[str, Stats]:
    """Time each model on the same feeds, interleaved round by round. ``sessions`` > 1 opens
    that many sessions per model and pools their times: two sessions of one file can differ by
    2-3% for the rest of their lives (where ORT's allocations happened to land), which decides
    a comparison of two close models. With more than one session their worker threads do not
    spin between runs (see ``validate.session``), else each session's idle spinning would slow
    whichever ran next."""
    slots = [(label, k) for label in models for k in range(max(1, sessions))]
    alone = len(slots) == 1
    live = {slot: _session(models[slot[0]], threads, device, spinning=alone) for slot in slots}
    names = {slot: [o.name for o in s.get_outputs()] for slot, s in live.items()}
    local = {slot: {k: v for k, v in feeds.items() if k in {i.name for i in s.get_inputs()}}
             for slot, s in live.items()}
    for _ in range(warmup):
        for slot, sess in live.items():
            sess.run(names[slot], local[slot])
    times: dict[str, list[float]] = {label: [] for label in models}
    start = time.perf_counter()
    k = 0
    orders = round_orders(slots)
    while k < runs or time.perf_counter() - start < min_seconds:
        for slot in next(orders):
            sess = live[slot]
            t0 = time.perf_counter()
            sess.run(names[slot], local[slot])
            times[slot[0]].append(time.perf_counter() - t0)
        k += 1
        if progress is not None:
            progress("bench", k, runs)
    batch = next((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0) > 0), 1)
    return {label: _stats(times[label], warmup, batch, threads, live[(label, 0)].get_providers()[0],
                          model_sha256(models[label]))
            for label in models}
