"""Benchmark `quantize` against ONNX Runtime's own quantizer on real models.

Competitor: ``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel int8
weights, uint8 activations, MinMax calibration) after ``quant_pre_process``, falling back as a
user would: without pre-processing when it fails, and on a model converted to opset 17
(``onnx.version_converter``) when its output does not load. Both quantizers get the same
calibration inputs; fidelity is measured on held-out inputs that calibration never saw:

- ppocr_cls: top-1 agreement with fp32 (rendered text lines, half rotated 180 degrees)
- ppocrv4_rec: exact greedy-CTC string agreement (lines at rapidocr's per-line width)
- ppocrv4_det: IoU of the binarised (>0.3) probability maps (rendered pages)
- all_minilm_l6_v2: cosine of mean-pooled sentence embeddings (stdlib docstring sentences)
- resnet50, keras_mobilenetv2: top-1 agreement (crops of the "eval" photos; calibration uses
  the "calib" photos); both are seeded networks (no pretrained weights offline)
- resnet50_digits: the same ResNet-50 *trained* on scikit-learn's handwritten digits by
  models/train_resnet50_digits.py (run when its file is in the cache): top-1 agreement on the
  597 held-out digits, calibration on 48 training digits

Latency: ORT defaults (all optimizations), fp32 and both quantized models timed interleaved
(onnxopt.benchmark.measure: shuffled order every round, three sessions per model pooled, at
least --min-seconds per thread count), at 1 and 2 threads; the table shows time relative to
fp32 (below 1.00 is faster). Size: file size relative to fp32.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: sympy, for ``quant_pre_process``).

    .venv/bin/python bench/quantize.py [--models ppocr_cls ...] [--runs 40] [--min-seconds 8] [--md bench/RESULTS_quantize.md]
                                       [--model resnet50=/path/to/trained/resnet50.onnx]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

import onnxopt  # noqa: E402
from models import inputs, paths  # noqa: E402
from onnxopt import benchmark, validate  # noqa: E402

Feeds = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# tasks: calibration inputs, held-out inputs, task fidelity


@dataclass
class Task:
    model: str
    metric: str
    calib: Callable[[], list[Feeds]]
    held: Callable[[], list[Feeds]]
    fidelity: Callable[[list[dict], list[dict], list[Feeds]], float]
    target: float
    pipeline: str = "quantize"


def _outs(model, feeds: list[Feeds]) -> list[dict]:
    sess = validate.session(model, optimize=True)
    return [validate.run(sess, f) for f in feeds]


def _first(o: dict) -> np.ndarray:
    return next(iter(o.values()))


def top1(ref, got, feeds) -> float:
    a = np.concatenate([_first(r).reshape(_first(r).shape[0], -1).argmax(1) for r in ref])
    b = np.concatenate([_first(g).reshape(_first(g).shape[0], -1).argmax(1) for g in got])
    return float(np.mean(a == b))


def ctc_agreement(ref, got, feeds) -> float:
    keys = inputs.load_ctc_keys(paths.asset_path("ppocrv4_rec", "keys"))
    same = [inputs.ctc_greedy_decode(_first(r), keys) == inputs.ctc_greedy_decode(_first(g), keys)
            for r, g in zip(ref, got)]
    return float(np.mean(same))


def det_iou(ref, got, feeds) -> float:
    ious = []
    for r, g in zip(ref, got):
        a, b = _first(r) > 0.3, _first(g) > 0.3
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return float(np.mean(ious))


def embedding_cosine(ref, got, feeds) -> float:
    cos = []
    for r, g, f in zip(ref, got, feeds):
        ea = inputs.mean_pool(_first(r), f["attention_mask"])
        eb = inputs.mean_pool(_first(g), f["attention_mask"])
        cos.extend(np.sum(ea * eb, axis=1).tolist())
    return float(np.mean(cos))


def _lines(lo: int, hi: int) -> list[str]:
    return inputs.text_lines(hi)[lo:hi]


def _rec(lines):
    return [{"x": inputs.ocr_text_line(t, w=inputs.rec_width(t))} for t in lines]


def _cls(lines, offset=0):
    return [{"x": inputs.cls_input(t, rotate180=(k + offset) % 2 == 1)} for k, t in enumerate(lines)]


def _pages(lines, size=640, per_page=12, step=6, font_size=28):
    """640x640 pages of 28 px text (rapidocr scales pages so text is about this tall)."""
    return [{"x": inputs.ocr_page(lines[k:k + per_page], size, size, font_size=font_size)}
            for k in range(0, len(lines) - per_page + 1, step)]


def _sentences(lo, hi):
    return [inputs.minilm_batch([s]) for s in inputs.docstring_sentences()[lo:hi]]


def _input_name(model: str) -> str:
    return onnx.load(str(model_file(model)), load_external_data=False).graph.input[0].name


def _photos(n, seed, split, batch_fn, name="input"):
    x = batch_fn(n, seed, split=split)
    return [{name: x[k:k + 1]} for k in range(n)]


TRAINED_DIGITS = "resnet50_digits"   # made by models/train_resnet50_digits.py, not fetched


def _digits(split: str) -> list[Feeds]:
    """The trained ResNet-50's data file (written beside it by the training script)."""
    path = model_file(TRAINED_DIGITS)
    data = np.load(path.with_name(path.stem + ".data.npz"))
    x = data["calib"] if split == "calib" else data["held"]
    return [{"input": x[k:k + 1]} for k in range(len(x))]


TASKS = {
    "ppocr_cls": Task("ppocr_cls", "top-1 agreement", lambda: _cls(_lines(0, 48)), lambda: _cls(_lines(100, 300), 1),
                      top1, 0.95),
    "ppocrv4_rec": Task("ppocrv4_rec", "CTC string agreement", lambda: _rec(_lines(0, 48)),
                        lambda: _rec(_lines(100, 220)), ctc_agreement, 0.90),
    "ppocrv4_det": Task("ppocrv4_det", "IoU of maps >0.3", lambda: _pages(_lines(0, 100)),
                        lambda: _pages(_lines(200, 320)), det_iou, 0.93),
    "all_minilm_l6_v2": Task("all_minilm_l6_v2", "embedding cosine", lambda: _sentences(0, 48),
                             lambda: _sentences(60, 116), embedding_cosine, 0.99),
    "resnet50": Task("resnet50", "top-1 agreement",
                     lambda: _photos(48, 0, "calib", inputs.imagenet_batch, _input_name("resnet50")),
                     lambda: _photos(100, 1, "eval", inputs.imagenet_batch, _input_name("resnet50")), top1, 0.95),
    TRAINED_DIGITS: Task(TRAINED_DIGITS, "top-1 agreement", lambda: _digits("calib"), lambda: _digits("held"),
                         top1, 0.95),
    "keras_mobilenetv2": Task("keras_mobilenetv2", "top-1 agreement",
                              lambda: _photos(48, 0, "calib", inputs.mobilenet_v2_batch, _input_name("keras_mobilenetv2")),
                              lambda: _photos(100, 1, "eval", inputs.mobilenet_v2_batch, _input_name("keras_mobilenetv2")), top1, 0.95),
}


# ---------------------------------------------------------------------------------------------
# the two quantizers


def write_calib(feeds: list[Feeds], directory: Path) -> Path:
    """One .npz per sample (rank = model rank, so each is a batch of one): shapes may differ."""
    directory.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(feeds):
        np.savez(directory / f"{k:04d}.npz", **f)
    return directory


def run_onnxopt(model_path: Path, calib_dir: Path, out: Path, pipeline: str) -> dict:
    start = time.perf_counter()
    res = onnxopt.run_pipeline(str(model_path), pipeline, str(calib_dir))
    seconds = time.perf_counter() - start
    res.save(out)
    stats = dict(res.report.records[-1].stats)
    stats.pop("per_node", None)
    return {"path": out, "seconds": seconds, "stats": stats, "notes": []}


def run_ort(model_path: Path, feeds: list[Feeds], work: Path) -> dict:
    """ORT's quantize_static as a user would run it, with the fallbacks a user would try."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    notes: list[str] = []
    start = time.perf_counter()

    def attempt(src: Path, tag: str) -> Path | None:
        pre = work / f"ort_{tag}_pre.onnx"
        try:
            quant_pre_process(str(src), str(pre))
            base = pre
        except Exception as exc:  # noqa: BLE001 - a user would note it and go on without
            notes.append(f"{tag}: quant_pre_process failed ({_short(exc)}); quantized without it")
            base = src
        out = work / f"ort_{tag}.onnx"
        try:
            quantize_static(str(base), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{tag}: quantize_static failed ({_short(exc)})")
            return None
        try:
            validate.session(str(out), optimize=True)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{tag}: quantized model does not load ({_short(exc)})")
            return None
        return out

    out = attempt(model_path, "as_given")
    if out is None and onnx.load(str(model_path), load_external_data=False).opset_import[0].version < 17:
        converted = work / "opset17.onnx"
        try:
            onnx.save(onnx.version_converter.convert_version(onnx.load(str(model_path)), 17), str(converted))
            notes.append("converted to opset 17 and retried")
            out = attempt(converted, "opset17")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"opset 17 conversion failed ({_short(exc)})")
    return {"path": out, "seconds": time.perf_counter() - start, "notes": notes}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


# ---------------------------------------------------------------------------------------------
# one model


EXTRA_MODES = {  # other quantize modes worth a row: model -> pipelines (onnxopt only)
    "ppocrv4_det": ["quantize{mode=fp16}"],
    "all_minilm_l6_v2": ["quantize{mode=dynamic}"],
    "resnet50": ["quantize{metric=top1 target=0.98 eval-samples=48}"],
}


OVERRIDES: dict[str, Path] = {}   # --model NAME=PATH: another file for a task (e.g. trained weights)


def model_file(name: str) -> Path:
    return OVERRIDES.get(name) or paths.model_path(name)


def bench_model(task: Task, runs: int, threads: tuple[int, ...], work: Path, extra: bool = True,
                min_seconds: float = 0.0) -> dict:
    model_path = model_file(task.model)
    calib, held = task.calib(), task.held()
    calib_dir = write_calib(calib, work / "calib")
    row: dict = {"model": task.model, "metric": task.metric, "target": task.target,
                 "calib": len(calib), "held": len(held)}
    ref = _outs(str(model_path), held)
    fp32_size = model_path.stat().st_size
    candidates: dict[str, Path] = {}
    try:
        ours = run_onnxopt(model_path, calib_dir, work / "onnxopt.onnx", task.pipeline)
        candidates["onnxopt"] = ours["path"]
        row["onnxopt"] = {"seconds": round(ours["seconds"], 1), "stats": ours["stats"]}
    except Exception as exc:  # noqa: BLE001 - report, do not hide
        row["onnxopt"] = {"error": _short(exc), "trace": traceback.format_exc(limit=3)}
    for k, pipeline in enumerate(EXTRA_MODES.get(task.model, []) if extra else []):
        label = f"onnxopt {pipeline}"
        try:
            other = run_onnxopt(model_path, calib_dir, work / f"mode{k}.onnx", pipeline)
            candidates[label] = other["path"]
            row[label] = {"seconds": round(other["seconds"], 1), "stats": other["stats"]}
        except Exception as exc:  # noqa: BLE001
            row[label] = {"error": _short(exc)}
    theirs = run_ort(model_path, calib, work)
    row["ort"] = {"seconds": round(theirs["seconds"], 1), "notes": theirs["notes"]}
    if theirs["path"] is not None:
        candidates["ort"] = theirs["path"]
    for label, path in candidates.items():
        try:
            onnx.checker.check_model(str(path))
            row[label]["valid"] = True
        except Exception as exc:  # noqa: BLE001
            row[label]["valid"] = f"checker: {_short(exc)}"
        got = _outs(str(path), held)
        row[label]["fidelity"] = round(task.fidelity(ref, got, held), 4)
        row[label]["size"] = round(path.stat().st_size / fp32_size, 3)
    feeds = held[0]
    for t in threads:
        models = {"fp32": str(model_path), **{k: str(v) for k, v in candidates.items()}}
        stats = benchmark.measure(models, feeds, threads=t, warmup=5, runs=runs, min_seconds=min_seconds,
                                  sessions=3)
        base = stats["fp32"].median_ms
        row.setdefault("fp32_ms", {})[t] = round(base, 3)
        row.setdefault("timed_runs", {})[t] = stats["fp32"].runs
        for label in candidates:
            row[label].setdefault("latency", {})[t] = round(stats[label].median_ms / base, 3)
    return row


# ---------------------------------------------------------------------------------------------
# report


def _cell(v, fmt="{:.3f}"):
    return "-" if v is None else (fmt.format(v) if isinstance(v, (int, float)) else str(v))


def markdown(rows: list[dict], command: str, threads: tuple[int, ...]) -> str:
    import onnxruntime as ort

    lines = ["## quantize: onnxopt vs ONNX Runtime's quantize_static", "",
             f"Command: `{command}`", "",
             f"ONNX Runtime {ort.__version__}, CPU EP; latency = median time relative to fp32 (interleaved runs, "
             "lower is better); size = file size relative to fp32; fidelity on held-out inputs vs fp32.", ""]
    head = "| model | metric (target) | quantizer | valid | fidelity | " + " | ".join(
        f"latency {t}T" for t in threads) + " | size | notes |"
    lines += [head, "|" + "---|" * (6 + len(threads))]
    for r in rows:
        labels = ["onnxopt", "ort"] + [k for k in r if k.startswith("onnxopt ")]
        for label in labels:
            q = r.get(label, {})
            if "error" in q:
                lines.append(f"| {r['model']} | {r['metric']} ({r['target']}) | {label} | error | - | "
                             + " | ".join("-" for _ in threads) + f" | - | {q['error']} |")
                continue
            lat = q.get("latency", {})
            notes = "; ".join(q.get("notes", []))
            st = q.get("stats", {})
            if label.startswith("onnxopt") and "int8_anchors" in st:
                half = st.get("weights_stored_fp16_float_compute")
                notes = (f"{st['int8_anchors']} int8 / {st.get('float_anchors', '?')} float anchors"
                         + (f" ({half} with float16 weights)" if half else "")
                         + f", calibration {st.get('calibration', {}).get('method', '?')}, {q.get('seconds', '?')} s")
            elif label.startswith("onnxopt "):
                notes = ", ".join(f"{k} {v}" for k, v in st.items() if k not in ("prepared", "mode")) \
                    + f", {q.get('seconds', '?')} s"
            valid = q.get("valid", "no model" if label == "ort" and "fidelity" not in q else "?")
            lines.append(f"| {r['model']} | {r['metric']} ({r['target']}) | {label} | {valid} | "
                         f"{_cell(q.get('fidelity'), '{:.4f}')} | "
                         + " | ".join(_cell(lat.get(t)) for t in threads)
                         + f" | {_cell(q.get('size'))} | {notes} |")
    lines.append("")
    lines.append("fp32 median ms: " + ", ".join(
        f"{r['model']} " + "/".join(f"{r.get('fp32_ms', {}).get(t, 0):.2f}" for t in threads)
        + " (" + "/".join(str(r.get("timed_runs", {}).get(t, "?")) for t in threads) + " runs)" for r in rows)
        + f" (threads {'/'.join(map(str, threads))})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(TASKS))
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--min-seconds", type=float, default=8.0,
                    help="time each thread count at least this long (small models get more runs)")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--md", default=None, help="write the markdown table here")
    ap.add_argument("--json", default=None, help="write raw results here")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="run task NAME on this ONNX file instead of the cached model (same inputs, e.g. "
                         "resnet50=/path/to/a/trained/resnet50.onnx with input 'input' [N,3,224,224])")
    args = ap.parse_args(argv)
    try:
        importlib.import_module("sympy")
    except ImportError:
        ap.error("sympy is missing: ONNX Runtime's quant_pre_process needs it, and without it the "
                 "competitor would be measured without its pre-processing; pip install -e '.[bench]'")
    for spec in args.model:
        name, _, path = spec.partition("=")
        if name not in TASKS or not path:
            ap.error(f"--model {spec}: want NAME=PATH with NAME one of {', '.join(TASKS)}")
        OVERRIDES[name] = Path(path)
    rows = []
    for name in args.models:
        if name == TRAINED_DIGITS and name not in OVERRIDES:
            default = paths.cache_dir() / f"{TRAINED_DIGITS}.onnx"
            if default.is_file():
                OVERRIDES[name] = default
            else:
                print(f"{name}: not made (models/train_resnet50_digits.py), skipped", file=sys.stderr)
                continue
        if name not in OVERRIDES and not paths.available(name):
            print(f"{name}: not in the cache (python models/fetch.py), skipped", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix=f"qbench_{name}_") as tmp:
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            row = bench_model(TASKS[name], args.runs, tuple(args.threads), Path(tmp), min_seconds=args.min_seconds)
            rows.append(row)
            print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    command = "python bench/quantize.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, command.strip(), tuple(args.threads))
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
