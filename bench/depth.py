"""Benchmark `depth`: latency and fidelity against the number of removed blocks, on the
all-MiniLM-L6-v2 export and ResNet-50, and the greedy choice against the exhaustive best single
removal.

Fidelity is task fidelity on held-out inputs that calibration never saw:
- MiniLM: cosine between mean-pooled sentence embeddings of the original and the reduced model
  (sentences from stdlib docstrings; calibration uses other sentences).
- ResNet-50: top-1 agreement with the original and logits cosine on crops of the "eval" photos
  (calibration uses the "calib" photos).

Latency: ORT defaults (all graph optimizations), every model timed interleaved in one run;
compare the ratios, not the milliseconds (the machine is shared).

    .venv/bin/python bench/depth.py [--models minilm resnet50] [--runs 30] [--md bench/RESULTS_depth.md]
                                    [--resnet50 FILE.onnx] [--image-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

import onnxopt  # noqa: E402
from models import inputs, paths  # noqa: E402
from onnxopt import benchmark, validate  # noqa: E402


def run_depth(model, pipeline: str, calib=None) -> tuple[onnx.ModelProto, dict, float]:
    start = time.perf_counter()
    res = onnxopt.run_pipeline(model, pipeline, calib)
    seconds = time.perf_counter() - start
    return res.model, res.report.records[0].stats, seconds


def n_ops(m: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in m.graph.node)


def latency(models: dict[str, onnx.ModelProto], feeds, runs: int) -> dict[str, float]:
    stats = benchmark.measure(models, feeds, warmup=3, runs=runs)
    return {k: s.median_ms for k, s in stats.items()}


# ---------------------------------------------------------------------------------------------
# MiniLM


def minilm(runs: int, work: Path) -> list[str]:
    if not paths.available("all_minilm_l6_v2"):
        return ["MiniLM: not in the cache (run `python models/fetch.py`), skipped."]
    model = str(paths.model_path("all_minilm_l6_v2"))
    sentences = inputs.docstring_sentences()
    calib_dir = work / "minilm_calib"
    calib_dir.mkdir()
    for k, s in enumerate(sentences[:16]):       # one file per sentence: no padding, own length
        np.savez(calib_dir / f"{k:03d}.npz", **inputs.minilm_batch([s]))
    held = sentences[16:]                         # the rest (100 with Python 3.11's docstrings)
    held_batches = [inputs.minilm_batch(held[k:k + 20]) for k in range(0, len(held), 20)]

    def embeddings(m):
        sess = validate.session(m, optimize=True)
        return np.concatenate([inputs.mean_pool(validate.run(sess, b)["last_hidden_state"], b["attention_mask"])
                               for b in held_batches])

    ref = embeddings(model)

    def fidelity(m):
        cos = np.sum(ref * embeddings(m), axis=1)
        return float(np.mean(cos)), float(np.min(cos))

    lines = ["### all-MiniLM-L6-v2 (6 layers)", ""]
    singles = {}
    for k in range(6):
        m, _, _ = run_depth(model, f"depth{{blocks={k}}}")
        singles[k] = fidelity(m)
    best = max(singles, key=lambda k: singles[k][0])
    _, stats, seconds = run_depth(model, "depth{remove=5}", str(calib_dir))
    order = stats["removed_blocks"]
    lines += [f"Exhaustive single-layer removal (held-out embedding cosine, {len(held)} sentences) vs the "
              "calibration sensitivity `depth` measured (last_hidden_state cosine, 8 sentences):", "",
              "| layer removed | held-out embedding cosine (mean) | min | depth's calibration cosine |",
              "|---|---|---|---|"]
    for k in range(6):
        mark = " (best)" if k == best else ""
        lines.append(f"| {k}{mark} | {singles[k][0]:.4f} | {singles[k][1]:.4f} | "
                     f"{stats['single_removal_cosine'][k]:.4f} |")
    first = order[0]
    lines += ["", f"Greedy `depth{{remove=1}}` picks layer {first}: held-out cosine {singles[first][0]:.4f}, "
              f"exhaustive best layer {best}: {singles[best][0]:.4f}, gap {singles[best][0] - singles[first][0]:.4f} "
              f"(criterion: <= 0.01). Greedy order for remove=5: {order} "
              f"({stats['evaluations']} evaluations, {seconds:.1f} s including export and session start).", ""]
    models = {"original": model}
    fid = {}
    for n in range(1, 6):
        m, _, _ = run_depth(model, "depth{blocks=" + ",".join(map(str, order[:n])) + "}")
        models[f"remove={n}"] = m
        fid[f"remove={n}"] = fidelity(m)
    feeds = inputs.minilm_batch(held[:8])
    lat = latency(models, feeds, runs)
    lines += [f"Latency: batch 8, padded length {feeds['input_ids'].shape[1]}, {runs} interleaved runs, ORT defaults.",
              "", "| removed (greedy) | layers left | MatMul | held-out embedding cosine (mean / min) | "
              "median ms | latency vs original |", "|---|---|---|---|---|---|"]
    for label, m in models.items():
        proto = onnx.load(m) if isinstance(m, str) else m
        f = "1.0000 / 1.0000" if label == "original" else f"{fid[label][0]:.4f} / {fid[label][1]:.4f}"
        n = 0 if label == "original" else int(label.split("=")[1])
        lines.append(f"| {label} {order[:n] if n else ''} | {6 - n} | {n_ops(proto, 'MatMul')} | {f} | "
                     f"{lat[label]:.2f} | {lat[label] / lat['original']:.3f} |")
    return lines


# ---------------------------------------------------------------------------------------------
# ResNet-50


def resnet50_path() -> str | None:
    try:
        return str(paths.model_path("resnet50")) if paths.available("resnet50") else None
    except KeyError:
        return None


def resnet50(runs: int, work: Path, model: str | None = None, image_dir: Path | None = None) -> list[str]:
    model = model or resnet50_path()
    if model is None:
        return ["ResNet-50: not in the cache (run `python models/fetch.py`), skipped."]
    calib = work / "resnet_calib.npz"
    np.savez(calib, input=inputs.imagenet_batch(16, seed=0, split="calib", image_dir=image_dir))
    held = inputs.imagenet_batch(64, seed=1, split="eval", image_dir=image_dir)
    ref_sess = validate.session(model, optimize=True)
    out_name = ref_sess.get_outputs()[0].name

    def logits(m):
        sess = validate.session(m, optimize=True)
        return np.concatenate([validate.run(sess, {"input": held[k:k + 16]})[out_name] for k in range(0, 64, 16)])

    ref = logits(model)

    def fidelity(m):
        got = logits(m)
        top1 = float(np.mean(np.argmax(got, 1) == np.argmax(ref, 1)))
        cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        return top1, float(np.mean(cos))

    infos = onnxopt.registry.get_pass("depth").list_blocks(model)
    _, stats, seconds = run_depth(model, "depth{remove=4 samples=8}", str(calib))
    order = stats["removed_blocks"]
    singles = {i.id: fidelity(run_depth(model, f"depth{{blocks={i.id}}}")[0]) for i in infos}
    best = max(singles, key=lambda k: singles[k][1])     # by held-out logits cosine, what depth optimizes
    first = order[0]
    original = onnx.load(model)
    lines = ["### ResNet-50", "",
             f"{len(infos)} candidate blocks (identity-shortcut bottlenecks; the 4 projection-shortcut blocks "
             f"are not candidates). Original: {n_ops(original, 'Conv')} Conv.", "",
             "| block | span | MACs | params | held-out top-1 agreement | logits cosine | depth's calibration cosine |",
             "|---|---|---|---|---|---|---|"]
    for i in infos:
        mark = " (best)" if i.id == best else ""
        lines.append(f"| {i.id}{mark} | {i.first_node} .. {i.last_node} | {i.macs / 1e6:.0f} M | {i.params} | "
                     f"{singles[i.id][0]:.3f} | {singles[i.id][1]:.4f} | {stats['single_removal_cosine'][i.id]:.4f} |")
    lines += ["", f"Greedy first pick: block {first} (top-1 agreement {singles[first][0]:.3f}, cosine "
              f"{singles[first][1]:.4f}); exhaustive best single by held-out logits cosine: block {best} "
              f"({singles[best][0]:.3f}, "
              f"{singles[best][1]:.4f}). Greedy order for remove=4: {order} ({stats['evaluations']} evaluations, "
              f"{seconds:.1f} s).", ""]
    models = {"original": model}
    fid = {}
    for n in range(1, 5):
        m, _, _ = run_depth(model, "depth{blocks=" + ",".join(map(str, order[:n])) + "}")
        models[f"remove={n}"] = m
        fid[f"remove={n}"] = fidelity(m)
    lat = latency(models, {"input": held[:1]}, runs)
    lines += [f"Latency: batch 1, 224x224, {runs} interleaved runs, ORT defaults.", "",
              "| removed (greedy) | Conv | held-out top-1 agreement | logits cosine | median ms "
              "| latency vs original |",
              "|---|---|---|---|---|---|"]
    for label, m in models.items():
        proto = onnx.load(m) if isinstance(m, str) else m
        f = "1.000 | 1.0000" if label == "original" else f"{fid[label][0]:.3f} | {fid[label][1]:.4f}"
        n = 0 if label == "original" else int(label.split("=")[1])
        lines.append(f"| {label} {order[:n] if n else ''} | {n_ops(proto, 'Conv')} | {f} | {lat[label]:.2f} | "
                     f"{lat[label] / lat['original']:.3f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "resnet50"], choices=["minilm", "resnet50"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--md", type=Path, help="also write the tables to this markdown file")
    ap.add_argument("--resnet50", help="a ResNet-50 ONNX file to use instead of the cached one")
    ap.add_argument("--image-dir", type=Path, help="where the photos are, if not in the model cache")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    lines = ["## depth", "", f"Command: `.venv/bin/python bench/depth.py --models {' '.join(args.models)} "
             f"--runs {args.runs}`; ORT {ort.__version__}, CPU.", ""]
    with tempfile.TemporaryDirectory(prefix="bench_depth_") as tmp:
        for name in args.models:
            if name == "minilm":
                lines += minilm(args.runs, Path(tmp))
            else:
                lines += resnet50(args.runs, Path(tmp), args.resnet50, args.image_dir)
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
