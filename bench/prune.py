"""Benchmark `prune`: ResNet-50 with channels zeroed the way structured-pruning trainers leave
them, pruned losslessly, and real models with `ratio` (lossy).

Variants are built from the ONNX model itself (models/fetch.py's resnet50, BN unfused):
- ``slim`` (network slimming): the chosen channels' conv rows AND their BN scale and shift are 0.
- ``l1`` (L1-structured, torch.nn.utils.prune.ln_structured): conv rows 0, BN left intact, so each
  such channel is the constant relu(BN shift) downstream; it leaves exactly where every consumer
  folds it (1x1 convs and the fc into their bias, padded 3x3 convs into a border term) or where the
  ReLU makes it 0; with ``prune{border=false}`` (also measured) constants at padded convs stay.
Chosen channels: per bottleneck 50% of conv1's and conv2's outputs, 25% of each stage's residual
channels (conv3 of every block + the downsample) and of the stem, lowest L1 norm first
(multiples of 16 remain, as a trainer given those ratios would leave).

The *ideal* parameter count is computed here from the architecture, independently of the pass:
every channel provably removable (zero, or a constant all of whose consumers fold it) removed,
plus the bias a 1x1 consumer needs to absorb folded constants and the [cout, 1, 3, 3] weight of a
padded 3x3 consumer's border term.

Checks: parameters reach the ideal; outputs within max rel 1e-5 of the variant on real photo
crops; ORT CPU latency ratio <= 1.15 x MACs ratio (ORT defaults, interleaved runs, medians).
Real models with ``ratio``: PP-OCRv4 rec (greedy CTC string agreement on rendered text lines,
calibrated on other lines) and ResNet-50 (top-1 agreement on held-out photos).

    .venv/bin/python bench/prune.py [--runs 40] [--threads 1] [--md bench/RESULTS_prune.md]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnxopt  # noqa: E402
from models import inputs, paths  # noqa: E402
from onnxopt import benchmark, summary, validate  # noqa: E402

INTERNAL, RESIDUAL, STEM = 0.5, 0.25, 0.25
CONV = re.compile(r"^/(?:(?P<stage>layer\d)/layer\d\.(?P<block>\d+)/)?(?P<name>conv\d|downsample)")


# ---------------------------------------------------------------------------------------------
# ResNet-50 structure: which channel space each conv writes and reads


def structure(m: onnx.ModelProto) -> dict[str, dict]:
    """conv node name -> {out, in, bn, k} channel spaces (stem, layerN, layerN.B.m1/m2)."""
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = {}
    stages = sorted({CONV.match(n.name).group("stage") for n in m.graph.node
                     if n.op_type == "Conv" and CONV.match(n.name).group("stage")})
    prev = {s: (stages[k - 1] if k else "stem") for k, s in enumerate(stages)}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        g = CONV.match(n.name)
        stage, block, name = g.group("stage"), g.group("block"), g.group("name")
        bn = consumers[n.output[0]][0]
        assert bn.op_type == "BatchNormalization"
        k = [a.ints for a in n.attribute if a.name == "kernel_shape"][0]
        if stage is None:
            spec = {"out": "stem", "in": None}
        else:
            res_in = prev[stage] if block == "0" else stage
            spec = {"conv1": {"out": f"{stage}.{block}.m1", "in": res_in},
                    "conv2": {"out": f"{stage}.{block}.m2", "in": f"{stage}.{block}.m1"},
                    "conv3": {"out": stage, "in": f"{stage}.{block}.m2"},
                    "downsample": {"out": stage, "in": prev[stage]}}[name]
        convs[n.name] = dict(spec, bn=bn.name, k=int(np.prod(k)), node=n)
    return convs


def choose_channels(m: onnx.ModelProto, convs: dict) -> dict[str, np.ndarray]:
    """Space -> channel indices to zero: the lowest-L1 share of each space's producer rows."""
    weights = {i.name: i for i in m.graph.initializer}
    norms: dict[str, np.ndarray] = {}
    for c in convs.values():
        w = numpy_helper.to_array(weights[c["node"].input[1]])
        l1 = np.abs(w).reshape(w.shape[0], -1).sum(axis=1)
        norms[c["out"]] = norms.get(c["out"], 0) + l1
    chosen = {}
    for space, l1 in norms.items():
        share = STEM if space == "stem" else (INTERNAL if ".m" in space else RESIDUAL)
        chosen[space] = np.sort(np.argsort(l1, kind="stable")[: int(round(share * l1.size))])
    return chosen


def make_variant(m: onnx.ModelProto, convs: dict, chosen: dict, style: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    inits = {i.name: i for i in out.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}

    def edit(name, fn):
        a = numpy_helper.to_array(inits[name]).copy()
        fn(a)
        inits[name].CopyFrom(numpy_helper.from_array(a, name))

    for c in convs.values():
        rows = chosen[c["out"]]
        edit(c["node"].input[1], lambda a: a.__setitem__(rows, 0))
        if style == "slim":
            bn = nodes[c["bn"]]
            for slot in (1, 2):  # scale and shift
                edit(bn.input[slot], lambda a: a.__setitem__(rows, 0))
    return out


def bn_shift(m: onnx.ModelProto, bn_name: str) -> np.ndarray:
    """BN(0) per channel in float64: what a zero conv row becomes after its BatchNormalization."""
    inits = {i.name: i for i in m.graph.initializer}
    bn = next(n for n in m.graph.node if n.name == bn_name)
    scale, shift, mean, var = (numpy_helper.to_array(inits[bn.input[k]]).astype(np.float64) for k in range(1, 5))
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    return shift - mean * scale / np.sqrt(var + eps)


def read_values(variant: onnx.ModelProto, convs: dict) -> dict[str, np.ndarray]:
    """conv name -> per input channel, the constant a zero-row channel has where this conv reads it.

    Stem and block-internal channels: relu(BN(0)). Residual channels: each block adds its
    conv3 BN(0) to the running value and applies the ReLU (block 0 starts from the downsample's
    BN(0)); a reader sees the value after the block before it."""
    by_out = {}
    for name, c in convs.items():
        by_out.setdefault(c["out"], []).append(name)
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    after: dict[str, list[np.ndarray]] = {}
    for stage in sorted({c["out"] for c in convs.values() if c["out"].startswith("layer") and "." not in c["out"]}):
        names = sorted((n for n in by_out[stage] if "downsample" not in n), key=lambda n: int(CONV.match(n).group("block")))
        z = bn_shift(variant, convs[next(n for n in by_out[stage] if "downsample" in n)]["bn"])
        after[stage] = []
        for n in names:
            z = relu(z + bn_shift(variant, convs[n]["bn"]))
            after[stage].append(z)
    values = {}
    for name, c in convs.items():
        space = c["in"]
        if space is None:
            continue
        if space == "stem" or ".m" in space:
            values[name] = relu(bn_shift(variant, convs[by_out[space][0]]["bn"]))
        else:
            g = CONV.match(name)
            same_stage = g.group("stage") == space
            values[name] = after[space][int(g.group("block")) - 1] if same_stage else after[space][-1]
    return values


def ideal_params(m: onnx.ModelProto, variant: onnx.ModelProto, convs: dict, chosen: dict,
                 border: bool = True) -> tuple[int, dict]:
    """Parameters of the best exact representation of ``variant`` (see module docstring);
    ``border``: constants read by a padded 3x3 conv leave too, for a [cout, 1, 3, 3] border weight."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    sizes = {c["out"]: inits[c["node"].input[1]].shape[0] for c in convs.values()}
    reads = read_values(variant, convs)
    removed = {}
    for space, rows in chosen.items():
        if ".m1" in space and not border:  # read by a padded 3x3 conv: only 0s after the ReLU leave
            reader = next(n for n, c in convs.items() if c["in"] == space)
            rows = rows[reads[reader][rows] == 0]
        removed[space] = rows
    kept = {s: sizes[s] - len(removed.get(s, ())) for s in sizes}
    total, folds = 0, 0
    for name, c in convs.items():
        cin = 3 if c["in"] is None else kept[c["in"]]
        total += kept[c["out"]] * cin * c["k"] + 4 * kept[c["out"]]
        if c["in"] is not None and np.any(reads[name][removed[c["in"]]] != 0):
            # a padded kxk conv: the border term's weight; a 1x1 conv: the bias that absorbs them
            total += kept[c["out"]] * (c["k"] if border and c["k"] > 1 else 1)
            folds += 1
    fc = next(n for n in m.graph.node if n.op_type == "Gemm")
    n_out = inits[fc.input[1]].shape[0]
    total += n_out * kept[max(s for s in sizes if s.startswith("layer") and "." not in s)] + n_out
    return total, {"kept": kept, "folds": folds}


# ---------------------------------------------------------------------------------------------
# runs


def prune(model, pipeline: str, calib=None):
    start = time.perf_counter()
    res = onnxopt.run_pipeline(model, pipeline, calib)
    record = [r for r in res.report.records if r.name == "prune"][-1]
    return res.model, record.stats, time.perf_counter() - start


def max_rel(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict]) -> float:
    sa, sb = validate.session(a), validate.session(b)
    return max(validate.diff(k, va, validate.run(sb, f)[k]).max_rel
               for f in feeds for k, va in validate.run(sa, f).items())


def save(m: onnx.ModelProto, work: Path, name: str) -> Path:
    path = work / f"{name}.onnx"
    onnx.save(m, path)
    return path


def resnet_variants(runs: int, threads: int, work: Path, lines: list[str]) -> list[dict]:
    base = onnx.load(paths.model_path("resnet50"))
    convs = structure(base)
    chosen = choose_channels(base, convs)
    photos = inputs.imagenet_batch(8, seed=1, split="eval")
    feeds = [{"input": photos[k:k + 1]} for k in range(len(photos))]
    rows = []
    # l1 also with border=false (constants at padded convs stay), timed in the same run
    for style, borders in (("slim", (True,)), ("l1", (True, False))):
        variant = make_variant(base, convs, chosen, style)
        p_var = save(variant, work, f"r50_{style}")
        candidates, done = {"variant": p_var}, []
        for border in borders:
            label = "" if border else ", `prune{border=false}`"
            pipeline = "prune" if border else "prune{border=false}"
            pruned, stats, seconds = prune(variant, pipeline)
            ideal, info = ideal_params(base, variant, convs, chosen, border)
            key = f"pruned_{border}"
            candidates[key] = save(pruned, work, f"r50_{style}_{key}")
            done.append((label, key, pruned, stats, seconds, ideal, info))
        lat = benchmark.measure(candidates, feeds[0], threads=threads, warmup=5, runs=runs)
        for label, key, pruned, stats, seconds, ideal, info in done:
            params = summary.summarize(pruned).params
            rel = max_rel(variant, pruned, feeds)
            macs_ratio = stats["macs_after"] / stats["macs_before"]
            lat_ratio = lat[key].median_ms / lat["variant"].median_ms
            rows.append(dict(model=f"ResNet-50 {style}{label}", params_before=summary.summarize(variant).params,
                             params_after=params, ideal=ideal, macs_ratio=macs_ratio, lat_ratio=lat_ratio,
                             lat_variant=lat["variant"].median_ms, lat_pruned=lat[key].median_ms,
                             p90=(lat["variant"].p90_ms, lat[key].p90_ms), rel=rel, seconds=seconds,
                             groups=stats["groups_removed"], folds=info["folds"],
                             ok_params=params == ideal, ok_rel=rel <= 1e-5, ok_lat=lat_ratio <= 1.15 * macs_ratio))
            lines.append(f"- {style}{label}: kept channels per space (ideal): "
                         + ", ".join(f"{s} {n}" for s, n in sorted(info['kept'].items()) if "." not in s))
    return rows


def rec_ratio(options: str, runs: int, threads: int, work: Path) -> dict:
    model = paths.model_path("ppocrv4_rec")
    keys = inputs.load_ctc_keys(paths.asset_path("ppocrv4_rec", "keys"))
    texts = inputs.text_lines(48)
    calib_lines, eval_lines = texts[:16], texts[16:48]
    name = onnx.load(model, load_external_data=False).graph.input[0].name
    calib = work / "rec_calib.npz"
    np.savez(calib, **{name: np.concatenate([inputs.ocr_text_line(t) for t in calib_lines])})
    pruned, stats, seconds = prune(model, f"prune{{{options}}}", calib)
    feeds = [{name: inputs.ocr_text_line(t)} for t in eval_lines]
    sa, sb = validate.session(model), validate.session(pruned)
    agree = 0
    for f in feeds:
        a, b = validate.run(sa, f), validate.run(sb, f)
        pa, pb = next(iter(a.values())), next(iter(b.values()))
        agree += inputs.ctc_greedy_decode(pa, keys) == inputs.ctc_greedy_decode(pb, keys)
    p_pr = save(pruned, work, "rec_pruned")
    lat = benchmark.measure({"variant": model, "pruned": p_pr}, feeds[0], threads=threads, warmup=5, runs=runs)
    macs_ratio = stats["macs_after"] / stats["macs_before"]
    return dict(model=f"PP-OCRv4 rec, `prune{{{options}}}`", params_before=stats["params_before"],
                params_after=stats["params_after"], ideal=None, macs_ratio=macs_ratio,
                lat_ratio=lat["pruned"].median_ms / lat["variant"].median_ms,
                lat_variant=lat["variant"].median_ms, lat_pruned=lat["pruned"].median_ms,
                p90=(lat["variant"].p90_ms, lat["pruned"].p90_ms), rel=None, seconds=seconds,
                groups=stats["groups_removed"], fidelity=f"CTC strings agree {agree}/{len(feeds)}, "
                f"calib cosine {stats.get('output_cosine', float('nan')):.4f}"
                + (f", share {stats['share']:.3f}" if "share" in stats else ""))


def resnet_ratio(options: str, runs: int, threads: int, work: Path) -> dict:
    model = paths.model_path("resnet50")
    calib = work / "r50_calib.npz"
    np.savez(calib, input=inputs.imagenet_batch(16, seed=2, split="calib"))
    pruned, stats, seconds = prune(model, f"prune{{{options}}}", calib)
    photos = inputs.imagenet_batch(32, seed=3, split="eval")
    sa, sb = validate.session(model), validate.session(pruned)
    a = np.concatenate([validate.run(sa, {"input": photos[k:k + 1]})["logits"] for k in range(len(photos))])
    b = np.concatenate([validate.run(sb, {"input": photos[k:k + 1]})["logits"] for k in range(len(photos))])
    top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    p_pr = save(pruned, work, "r50_ratio")
    lat = benchmark.measure({"variant": model, "pruned": p_pr}, {"input": photos[:1]}, threads=threads, warmup=5, runs=runs)
    macs_ratio = stats["macs_after"] / stats["macs_before"]
    return dict(model=f"ResNet-50 (seeded weights), `prune{{{options}}}`", params_before=stats["params_before"],
                params_after=stats["params_after"], ideal=None, macs_ratio=macs_ratio,
                lat_ratio=lat["pruned"].median_ms / lat["variant"].median_ms,
                lat_variant=lat["variant"].median_ms, lat_pruned=lat["pruned"].median_ms,
                p90=(lat["variant"].p90_ms, lat["pruned"].p90_ms), rel=None, seconds=seconds,
                groups=stats["groups_removed"], fidelity=f"top-1 agreement {top1:.3f} on 32 held-out photos, "
                f"calib cosine {stats.get('output_cosine', float('nan')):.4f}")


def table(rows: list[dict]) -> list[str]:
    out = ["| model | params before -> after (ideal) | MACs ratio | latency ratio (ms: before -> after) | "
           "<= 1.15 x MACs | max rel | prune s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ideal = f" ({r['ideal']:,}, {'met' if r['ok_params'] else 'NOT met'})" if r["ideal"] is not None else ""
        rel = f"{r['rel']:.1e}" if r["rel"] is not None else r.get("fidelity", "")
        out.append(f"| {r['model']} | {r['params_before']:,} -> {r['params_after']:,}{ideal} | {r['macs_ratio']:.3f} | "
                   f"{r['lat_ratio']:.3f} ({r['lat_variant']:.1f} -> {r['lat_pruned']:.1f}) | "
                   f"{'yes' if r['lat_ratio'] <= 1.15 * r['macs_ratio'] else 'no'} | {rel} | {r['seconds']:.1f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--md", type=Path, default=None, help="write the markdown section here")
    ap.add_argument("--skip-ratio", action="store_true", help="only the lossless ResNet-50 variants")
    args = ap.parse_args()
    if not paths.available("resnet50"):
        print("resnet50 is not in the model cache: run `python models/fetch.py`", file=sys.stderr)
        return 2
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = resnet_variants(args.runs, args.threads, work, notes)
        if not args.skip_ratio:
            if paths.available("ppocrv4_rec"):
                rows.append(rec_ratio("ratio=0.1 criterion=activation", args.runs, args.threads, work))
                rows.append(rec_ratio("ratio=0.3 criterion=activation target=0.98", args.runs, args.threads, work))
            rows.append(resnet_ratio("ratio=0.3 criterion=activation", args.runs, args.threads, work))
    import onnxruntime as ort

    lines = ["## prune", "",
             f"`.venv/bin/python bench/prune.py --runs {args.runs} --threads {args.threads}`  "
             f"(ORT {ort.__version__} CPU, graph optimizations on, {args.threads} thread(s), batch 1, "
             f"{args.runs} interleaved runs, medians; the machine is shared, compare ratios)", ""]
    lines += table(rows)
    lines += ["", "Lossless variants: latency and max rel against the zeroed (unpruned) variant on 8 held-out "
              "photo crops; ideal = parameters with every provably removable channel gone (computed from the "
              "architecture, not by the pass)."] + notes
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    ok = all(r.get("ok_params", True) and r.get("ok_rel", True) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
