"""Helpers shared by the export scripts that models/fetch.py runs inside the export venv
(export_resnet50.py, export_keras_mobilenetv2.py): hashing, atomic writes, the export record,
ORT runs and the numeric comparison against the framework. Needs numpy and, for the ONNX
parts, onnx and onnxruntime (all in the export venv)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(named_arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """sha256 of named arrays in the given order: for each, ``name:dtype:shape\\n`` then the
    raw little-endian bytes (C order). Independent of the ONNX serialisation, so it pins the
    weights even where the exporter's bytes change."""
    h = hashlib.sha256()
    for name, a in named_arrays:
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}:{a.dtype.str}:{list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def temp_beside(path: Path) -> Path:
    """A fresh temporary file name in path's directory (for write-then-rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_record(path: Path, record: dict) -> None:
    """Atomically write the export record (written last: fetch.py and paths.available() treat
    a model without it as absent)."""
    tmp = temp_beside(path)
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    publish(tmp, path)


def model_summary(m) -> dict:
    """Opsets, IR, inputs/outputs, node count and op histogram of an onnx.ModelProto."""
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "opset": opset.get("ai.onnx"),
        "opset_import": opset,
        "ir_version": m.ir_version,
        "inputs": {i.name: dims(i) for i in m.graph.input},
        "outputs": {o.name: dims(o) for o in m.graph.output},
        "nodes": len(m.graph.node),
        "op_histogram": dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items())),
        "initializers": len(m.graph.initializer),
    }


def record_head(name: str, out: Path, recipe: int, weights_sha: str, pinned: str, m) -> dict:
    """The fields every export record starts with: the file, its recipe, the weights' hash
    against the registry pin, and ``model_summary``."""
    return {
        "model": name,
        "file": out.name,
        "sha256": sha256_file(out),
        "size": out.stat().st_size,
        "export_recipe": recipe,
        "weights_sha256": weights_sha,
        "weights_sha256_pinned": pinned or None,
        "weights_match_pin": (weights_sha == pinned) if pinned else None,
        **model_summary(m),
    }


def environment() -> dict:
    """Versions that decide an export's bytes (torch/keras are added by their scripts)."""
    import platform
    import sys

    import onnx
    import onnxruntime
    import PIL

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0], "machine": platform.machine()}


def refuse(script: str, problems: list[str]) -> int:
    """Print what failed (the first 20) and the exit status that leaves no model behind."""
    import sys

    for p in problems[:20]:
        print(f"{script}: {p}", file=sys.stderr)
    return 1


def ort_session(path: Path):
    """An ORT CPU session with graph optimizations off, so the file itself is what runs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """max relative error (max|a-b| / max|a|), max |a-b| and top-1 agreement over the batch."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    diff = float(np.abs(ref - got).max())
    return {
        "shape": list(ref.shape),
        "max_abs_diff": diff,
        "max_rel_err": diff / max(float(np.abs(ref).max()), 1e-12),
        "top1_agreement": float((ref.argmax(axis=1) == got.argmax(axis=1)).mean()),
        "finite": bool(np.isfinite(got).all()),
    }


def output_spread(y: np.ndarray) -> dict:
    """How informative a classifier's outputs are on real photos: distinct top-1 classes,
    median top1-top2 margin, std across classes and across images."""
    y = np.asarray(y, dtype=np.float64)
    top2 = np.sort(y, axis=1)[:, -2:]
    return {
        "images": int(y.shape[0]),
        "distinct_top1": len(set(y.argmax(axis=1).tolist())),
        "median_top1_margin": float(np.median(top2[:, 1] - top2[:, 0])),
        "mean_std_over_classes": float(y.std(axis=1).mean()),
        "mean_std_over_images": float(y.std(axis=0).mean()),
        "min": float(y.min()),
        "max": float(y.max()),
    }
