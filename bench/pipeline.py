"""Benchmark a pipeline on the real models: nodes, size, tool time, ORT latency ratio, max rel diff.

Latency is measured with ORT defaults (what ships), optimized vs original interleaved in one run.

    .venv/bin/python bench/pipeline.py [-p PIPELINE] [--runs 50] [--threads 1] [--models a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxopt  # noqa: E402
from models import inputs, paths  # noqa: E402
from onnxopt import benchmark, summary, validate  # noqa: E402


def feeds_for(name: str) -> dict[str, np.ndarray]:
    """Real inputs: rendered text for the OCR models, docstring sentences for MiniLM."""
    if name == "ppocrv4_det":
        return {"x": inputs.ocr_page(["onnxopt keeps outputs", "graph rewriting passes"], 320, 320)}
    if name == "ppocrv4_rec":
        return {"x": inputs.ocr_text_line("Command-line parsing library", 48, 320)}
    if name == "ppocr_cls":
        return {"x": inputs.cls_input("JSON (JavaScript Object Notation)")}
    if name == "all_minilm_l6_v2":
        return inputs.minilm_batch(inputs.docstring_sentences()[:4])
    raise KeyError(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--pipeline", default=None, help="default: onnxopt's default pipeline")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="ppocrv4_det,ppocrv4_rec,ppocr_cls,all_minilm_l6_v2")
    args = ap.parse_args()
    pipeline = args.pipeline or onnxopt.default_pipeline()
    print(f"pipeline: {onnxopt.parse_pipeline(pipeline)}")
    print(f"ORT threads {args.threads}, {args.runs} interleaved runs, median latency\n")
    print("| model | nodes before | nodes after | size before | size after | tool s | latency ratio | max rel |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        if not paths.available(name):
            print(f"| {name} | not fetched (run models/fetch.py) | | | | | | |")
            continue
        src = paths.model_path(name)
        t0 = time.perf_counter()
        result = onnxopt.run_pipeline(src, pipeline)
        tool = time.perf_counter() - t0
        out = result.model
        feeds = feeds_for(name)
        ref = validate.run(validate.session(src), feeds)
        got = validate.run(validate.session(out), feeds)
        max_rel = max(validate.diff(k, ref[k], got[k]).max_rel for k in ref)
        stats = benchmark.measure({"before": src, "after": out}, feeds, threads=args.threads, runs=args.runs)
        before, after = summary.summarize(result.source.proto, src), summary.summarize(out)
        print(f"| {name} | {before.nodes} | {after.nodes} | {before.file_bytes / 1e6:.2f} MB | "
              f"{summary.serialized_size(out) / 1e6:.2f} MB | {tool:.2f} | "
              f"{stats['after'].median_ms / stats['before'].median_ms:.3f} | {max_rel:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
