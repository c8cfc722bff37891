"""onnxopt (cleanup,fold,fuse) against onnxslim and onnx-simplifier on the real models, one run.

For every model and tool: node count, file size, tool wall time (median of interleaved
repeats, model path in -> ModelProto out, imports excluded), ORT latency as a ratio to the
original (ORT defaults, all candidates interleaved in one measurement) and the largest output
difference against the original (ORT with optimizations off, real inputs). The drift of ORT's
own graph optimizations (ORT_ENABLE_ALL against optimizations off) is shown as a reference.

The third-party tools are not dependencies of this project: install them into a separate
directory (``pip install --target /tmp/thirdparty onnxslim onnxsim``) and pass it with
``--thirdparty``; it is appended to sys.path, so the project's own onnx/numpy win. A tool that
is not importable is reported as missing and skipped.

    .venv/bin/python bench/simplify.py [--models a,b] [--repeats 3] [--runs 30] [--threads 1]
                                       [--thirdparty /tmp/thirdparty] [--out bench/RESULTS_fuse.md]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxopt  # noqa: E402
import onnxopt.passes.fold  # noqa: E402,F401 - registered by entry point too; explicit for clarity
import onnxopt.passes.fuse  # noqa: E402,F401
from models import inputs, paths  # noqa: E402
from onnxopt import benchmark, validate  # noqa: E402

PIPELINE = "cleanup,fold,fuse"
MODELS = ("ppocrv4_det", "ppocrv4_rec", "ppocr_cls", "all_minilm_l6_v2", "resnet50", "keras_mobilenetv2")


def feeds_for(name: str) -> list[dict[str, np.ndarray]]:
    """Real inputs, two feeds per model (the first one is also the latency feed)."""
    if name == "ppocrv4_det":
        lines = inputs.text_lines(24, max_chars=26)
        return [{"x": inputs.ocr_page(lines[:12], 320, 320)}, {"x": inputs.ocr_page(lines[12:], 256, 416, font_size=18)}]
    if name == "ppocrv4_rec":
        lines = inputs.text_lines(5, max_chars=18)
        return [{"x": inputs.ocr_text_line(lines[0], 48, 320)}, {"x": inputs.ocr_batch(lines[1:], 48, 480)}]
    if name == "ppocr_cls":
        lines = inputs.text_lines(4, max_chars=24)
        return [{"x": inputs.cls_input(lines[0])},
                {"x": inputs.ocr_batch(lines, 48, 192, rotate180=[False, True, False, True])}]
    if name == "all_minilm_l6_v2":
        sents = inputs.docstring_sentences()
        return [inputs.minilm_batch(sents[:4]), inputs.minilm_batch(sents[4:12])]
    if name == "resnet50":
        return [{"input": inputs.imagenet_batch(1, seed=11)}, {"input": inputs.imagenet_batch(4, seed=12)}]
    if name == "keras_mobilenetv2":
        return [{"input": inputs.mobilenet_v2_batch(1, seed=11)}, {"input": inputs.mobilenet_v2_batch(4, seed=12)}]
    raise KeyError(name)


# ------------------------------------------------------------------------------------- tools


def tools(thirdparty: str | None) -> tuple[dict[str, Callable[[Path], onnx.ModelProto]], list[str]]:
    """name -> simplify(path) -> ModelProto, and notes on the tools that are missing."""
    if thirdparty:
        sys.path.append(thirdparty)
    found: dict[str, Callable[[Path], onnx.ModelProto]] = {
        "onnxopt": lambda path: onnxopt.optimize(path, passes=PIPELINE),
    }
    notes = []
    try:
        slim = importlib.import_module("onnxslim")
        found["onnxslim"] = lambda path: slim.slim(str(path))
        notes.append(f"onnxslim {getattr(slim, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        notes.append(f"onnxslim missing ({type(exc).__name__}: {exc})")
    try:
        sim = importlib.import_module("onnxsim")

        def run_onnxsim(path):
            model, ok = sim.simplify(onnx.load(str(path)))
            if not ok:
                raise RuntimeError("onnx-simplifier's own check failed")
            return model

        found["onnxsim"] = run_onnxsim
        notes.append(f"onnx-simplifier {getattr(sim, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"onnx-simplifier missing ({type(exc).__name__}: {exc})")
    return found, notes


# ------------------------------------------------------------------------------------ metrics


@dataclass
class Row:
    tool: str
    nodes: int = 0
    size: int = 0
    seconds: list[float] = field(default_factory=list)
    latency_ratio: float = float("nan")
    max_rel: float = float("nan")
    error: str = ""


def count_nodes(graph: onnx.GraphProto) -> int:
    total = 0
    for node in graph.node:
        total += 1
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                total += count_nodes(a.g)
    return total


def max_rel(reference: onnx.ModelProto | Path, candidate: onnx.ModelProto, feeds: list[dict]) -> float:
    a, b = validate.session(reference), validate.session(candidate)
    worst = 0.0
    for f in feeds:
        ra, rb = validate.run(a, f), validate.run(b, f)
        for name in ra:
            worst = max(worst, validate.diff(name, ra[name], rb[name]).max_rel)
    return worst


def ort_drift(path: Path, feeds: list[dict]) -> float:
    a, b = validate.session(path), validate.session(path, optimize=True)
    worst = 0.0
    for f in feeds:
        ra, rb = validate.run(a, f), validate.run(b, f)
        for name in ra:
            worst = max(worst, validate.diff(name, ra[name], rb[name]).max_rel)
    return worst


def bench_model(name: str, found: dict, repeats: int, runs: int, threads: int) -> tuple[dict[str, Row], float, int, int]:
    path = paths.model_path(name)
    original = onnx.load(str(path))
    rows = {tool: Row(tool) for tool in found}
    outputs: dict[str, onnx.ModelProto] = {}
    for _ in range(repeats):  # interleaved: machine noise hits every tool alike
        for tool, simplify in found.items():
            if rows[tool].error:
                continue
            t0 = time.perf_counter()
            try:
                outputs[tool] = simplify(path)
            except Exception as exc:  # noqa: BLE001 - a tool failing on a model is a result
                rows[tool].error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                continue
            rows[tool].seconds.append(time.perf_counter() - t0)
    feeds = feeds_for(name)
    for tool, model in outputs.items():
        rows[tool].nodes = count_nodes(model.graph)
        rows[tool].size = model.ByteSize()
        try:
            rows[tool].max_rel = max_rel(path, model, feeds)
        except Exception as exc:  # noqa: BLE001
            rows[tool].error = f"ORT: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    runnable = {tool: m for tool, m in outputs.items() if not rows[tool].error}
    stats = benchmark.measure({"original": original, **runnable}, feeds[0], threads=threads, runs=runs, warmup=3)
    for tool in runnable:
        rows[tool].latency_ratio = stats[tool].median_ms / stats["original"].median_ms
    return rows, ort_drift(path, feeds), count_nodes(original.graph), original.ByteSize()


def table(results: dict, notes: list[str], args) -> str:
    lines = [f"Tools: onnxopt `{onnxopt.parse_pipeline(PIPELINE)}`; " + "; ".join(notes) + ".",
             f"ORT {benchmark.validate._ort().__version__} CPU, {args.threads} thread(s), {args.runs} interleaved runs "
             f"(latency = median ratio to the original, ORT defaults); tool time = median of {args.repeats} "
             "interleaved runs, path in -> ModelProto out; max rel = max|a-b|/max|a| against the original, "
             "ORT optimizations off, two real-input feeds per model.", "",
             "| model | tool | nodes | size MB | tool s | latency ratio | max rel |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, (rows, drift, nodes, size) in results.items():
        lines.append(f"| {name} | original | {nodes} | {size / 1e6:.2f} | | 1.000 | ORT's own fusions: {drift:.1e} |")
        for row in rows.values():
            if row.error and not row.seconds:
                lines.append(f"| {name} | {row.tool} | failed: {row.error} | | | | |")
                continue
            secs = statistics.median(row.seconds) if row.seconds else float("nan")
            lines.append(f"| {name} | {row.tool} | {row.nodes} | {row.size / 1e6:.2f} | {secs:.2f} | "
                         f"{row.latency_ratio:.3f} | {row.max_rel:.1e} |" + (f" {row.error}" if row.error else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3, help="tool runs per model (median time)")
    ap.add_argument("--runs", type=int, default=30, help="interleaved ORT latency runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--thirdparty", default="/tmp/thirdparty", help="directory onnxslim/onnxsim are installed in")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    found, notes = tools(args.thirdparty)
    results = {}
    for name in args.models.split(","):
        if not paths.available(name):
            print(f"{name}: not fetched (run models/fetch.py), skipped", file=sys.stderr)
            continue
        results[name] = bench_model(name, found, args.repeats, args.runs, args.threads)
        print(f"{name}: done", file=sys.stderr)
    text = table(results, notes, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
