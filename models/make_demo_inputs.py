#!/usr/bin/env python3
"""Regenerate models/demo/ppocr_cls_inputs.npz: real text lines for the bundled direction
classifier (models/demo/ppocr_cls.onnx).

    python models/make_demo_inputs.py [--check]

Each line is taken verbatim from a Python standard-library module docstring (asserted below),
rendered with Pillow's bundled font (ImageFont.load_default(size=32)) as a tight crop, as the
detector would cut it, and preprocessed as rapidocr-onnxruntime 1.4.4's TextClassifier does
(height 48, aspect kept, width capped at 192, (x/255 - 0.5)/0.5, zero-padded right). The last
line is rotated by 180 degrees, so both classes appear.

The npz holds one array, "x" (the model's input name), float32 (N, 3, 48, 192): the same rank
as the model input, so sample k is x[k:k+1] (DESIGN.md section 1). The expected labels go to
ppocr_cls_inputs.json beside it. Needs Pillow (only to regenerate; the npz is committed) and
onnxruntime (to check that the classifier is confident and right on every sample).
--check regenerates in memory and exits 1 if the committed npz differs by more than 1e-6.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import inputs  # models/inputs.py

DEMO = HERE / "demo"
MODEL = DEMO / "ppocr_cls.onnx"
NPZ = DEMO / "ppocr_cls_inputs.npz"
META = DEMO / "ppocr_cls_inputs.json"
LABELS = ["0", "180"]
MIN_CONFIDENCE = 0.99

# (module whose docstring holds the text, text, rotated by 180 degrees)
SAMPLES = [
    ("argparse", "Command-line parsing library", False),
    ("json", "JSON (JavaScript Object Notation)", False),
    ("argparse", "positional arguments", True),
]


def build() -> tuple[np.ndarray, list[dict]]:
    xs, meta = [], []
    for module, text, rotated in SAMPLES:
        doc = importlib.import_module(module).__doc__ or ""
        if text not in " ".join(doc.split()):
            raise SystemExit(f"{text!r} is not in {module}.__doc__ on this Python")
        xs.append(inputs.cls_input(text, rotate180=rotated, font_size=32))
        meta.append({"text": text, "source": f"{module}.__doc__", "rotated_180": rotated,
                     "expected_label": LABELS[int(rotated)]})
    return np.concatenate(xs).astype(np.float32), meta


def classify(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[k:k + 1]})[0] for k in range(len(x))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed npz, write nothing")
    args = ap.parse_args()

    x, meta = build()
    probs = classify(x)
    for m, p in zip(meta, probs):
        label, conf = LABELS[int(p.argmax())], float(p.max())
        m["probabilities"] = [round(float(v), 6) for v in p]
        print(f"{m['text']!r:40} rotated={m['rotated_180']!s:5} -> {label} ({conf:.4f})")
        if label != m["expected_label"] or conf < MIN_CONFIDENCE:
            print(f"make_demo_inputs: classifier not confidently right on {m['text']!r}", file=sys.stderr)
            return 1
    if args.check:
        old = np.load(NPZ)["x"]
        diff = float(np.abs(old - x).max()) if old.shape == x.shape else float("inf")
        print(f"max |committed - regenerated| = {diff:.2e}")
        return 0 if diff <= 1e-6 else 1
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x)
    NPZ.write_bytes(buf.getvalue())
    META.write_text(json.dumps({"input": "x", "shape": list(x.shape), "labels": LABELS,
                                "samples": meta}, indent=1) + "\n")
    print(f"wrote {NPZ.relative_to(HERE.parent)} ({NPZ.stat().st_size / 1024:.1f} KiB) and {META.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
