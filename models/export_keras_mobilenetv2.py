"""Export a Keras MobileNetV2 (keras.applications, weights=None, 224x224x3 NHWC) to ONNX with
Keras' own exporter, ``model.export(path, format="onnx")``, on the torch backend.

Run by models/fetch.py with the export venv's python (keras 3, torch 2.13.0, onnx,
onnxruntime, Pillow); not meant for the project venv. KERAS_BACKEND=torch is set here, before
keras is imported. Offline: weights=None needs no download.

What Keras' exporter does on the torch backend (keras/src/export/onnx.py): the input signature
has a dynamic batch (None), so it skips the dynamo exporter and calls the TorchScript one,
``torch.onnx.export(dynamo=False, do_constant_folding=True, dynamic_axes={"input": {0: "batch"}})``
at torch's default opset. The graph is what a Keras user gets: NHWC in and out, every
convolution wrapped in Transposes (Keras' torch backend permutes to NCHW and back around each
torch conv), BatchNormalization spelled as Sub/Mul/Add (Keras' own formula), ReLU6 as Clip,
and Casts and Identities left by the tracer. We only name the input ("input"); the output name
is the exporter's.

Weights, deterministic (seed 0): Keras' initializers (keras.utils.set_random_seed), then every
BatchNormalization gets gamma ~ U(0.5, 1.5) and beta ~ N(0, 0.2) (float64 draws from one torch
generator), so folding BN is really exercised; the moving statistics are then calibrated on
--calib-images (32: Keras' torch backend is slow in training mode, about 0.3 s a crop on 2
cores) real photo crops (models/inputs.mobilenet_v2_batch, split "calib") in training mode, as a cumulative average over chunks of 16 (momentum k/(k+1) for chunk k); the classifier
is centred and scaled on the pooled features of that pass so the logits before the softmax
have spread LOGIT_STD (else one class wins on every photo).

Checks (failing ones exit 1 and leave no model): onnx.checker full check; onnxruntime
(optimizations off) against ``model.predict`` on held-out photos (split "eval") at batch sizes
1, 3 and 8: max relative error <= MAX_REL_ERR and top-1 agreement; outputs that tell photos
apart. The record goes to <stem>.export.json beside the model, written last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export_common as common  # models/export_common.py
import inputs  # models/inputs.py
import numpy as np

# The output is a softmax: a logit error of ~1e-4 (float32 through 52 convolutions, ORT's
# kernels against torch's) is a relative error of ~1e-4 on the largest probability.
MAX_REL_ERR = 5e-4
MIN_TOP1_AGREEMENT = 0.95
LOGIT_STD = 2.0
CALIB_CHUNK = 16
EVAL_BATCHES = ((1, 101), (3, 102), (8, 103))
SIZE = 224


def randomize_bn(model, seed: int) -> int:
    """Non-trivial gamma/beta (and moving statistics, replaced by the calibration)."""
    import keras
    import torch

    g = torch.Generator().manual_seed(seed)

    def draw(n: int, kind: str, a: float, b: float) -> np.ndarray:
        t = torch.empty(n, dtype=torch.float64)
        t = t.normal_(a, b, generator=g) if kind == "normal" else t.uniform_(a, b, generator=g)
        return t.numpy().astype(np.float32)

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        c = int(layer.gamma.shape[0])
        layer.gamma.assign(draw(c, "uniform", 0.5, 1.5))
        layer.beta.assign(draw(c, "normal", 0.0, 0.2))
        layer.moving_mean.assign(draw(c, "normal", 0.0, 0.5))
        layer.moving_variance.assign(draw(c, "uniform", 0.5, 2.0))
    return len(bns)


def calibrate(model, x: np.ndarray) -> None:
    """Cumulative-average BN statistics over chunks (training mode), then centre and scale the
    classifier on the pooled features of the same pass."""
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    dense = model.layers[-1]
    pooled = keras.Model(model.inputs, dense.input)
    saved = [layer.momentum for layer in bns]
    feats = []
    for k, i in enumerate(range(0, len(x), CALIB_CHUNK)):
        for layer in bns:
            layer.momentum = k / (k + 1)  # chunk 0 replaces the statistics; then a running mean
        feats.append(keras.ops.convert_to_numpy(pooled(x[i:i + CALIB_CHUNK], training=True)))
    for layer, m in zip(bns, saved):
        layer.momentum = m
    f = np.concatenate(feats).astype(np.float64)
    w, b = (np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64) for v in (dense.kernel, dense.bias))
    mu = f.mean(axis=0)
    spread = ((f - mu) @ w).std()
    w = w * (LOGIT_STD / spread)
    b = b - mu @ w
    dense.kernel.assign(w.astype(np.float32))
    dense.bias.assign(b.astype(np.float32))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="directory of the fetched photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--weights-sha256", default="", help="pinned weights sha256 (mismatch: warning)")
    ap.add_argument("--recipe", type=int, default=0, help="registry export_recipe, recorded")
    args = ap.parse_args()

    import keras
    import onnx
    import torch

    t0 = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = keras.applications.MobileNetV2(
        input_tensor=keras.Input(shape=(SIZE, SIZE, 3), name="input"), weights=None)
    n_bn = randomize_bn(model, args.seed)
    x_cal = inputs.mobilenet_v2_batch(args.calib_images, args.seed, SIZE, split="calib", image_dir=args.images)
    t = time.perf_counter()
    calibrate(model, x_cal)
    calib_s = time.perf_counter() - t
    model(x_cal[:1], training=False)  # export() refuses a model that was never called itself
    wsha = common.weights_sha256((w.path, keras.ops.convert_to_numpy(w)) for w in model.weights)

    tmp = common.temp_beside(args.out)
    try:
        t = time.perf_counter()
        model.export(str(tmp), format="onnx", verbose=False)
        export_s = time.perf_counter() - t
        m = onnx.load(str(tmp))
        onnx.checker.check_model(m, full_check=True)
        sess = common.ort_session(tmp)
        in_name = sess.get_inputs()[0].name
        out_name = sess.get_outputs()[0].name
        problems = []
        if in_name != "input":
            problems.append(f"input is named {in_name!r}, not 'input'")
        checks, ys = [], []
        for n, seed in EVAL_BATCHES:
            x = inputs.mobilenet_v2_batch(n, seed, SIZE, split="eval", image_dir=args.images)
            got = sess.run([out_name], {in_name: x})[0]
            ref = model.predict(x, verbose=0, batch_size=n)
            c = common.compare(ref, got)
            c["max_logprob_diff"] = float(np.abs(np.log(np.maximum(ref, 1e-30)) - np.log(np.maximum(got, 1e-30))).max())
            checks.append(c)
            ys.append(ref)
            if not (c["finite"] and c["max_rel_err"] <= MAX_REL_ERR and c["top1_agreement"] >= MIN_TOP1_AGREEMENT):
                problems.append(f"ORT disagrees with keras: {c}")
        spread = common.output_spread(np.log(np.maximum(np.concatenate(ys), 1e-30)))
        if spread["distinct_top1"] < 3:
            problems.append(f"outputs do not tell photos apart: {spread}")
        if problems:
            return common.refuse("export_keras_mobilenetv2", problems)
        common.publish(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)

    record = {
        **common.record_head("keras_mobilenetv2", args.out, args.recipe, wsha, args.weights_sha256, m),
        "output_name": out_name,
        "exporter": "keras Model.export(format='onnx') on the torch backend (TorchScript exporter, do_constant_folding=True)",
        "weights": (f"keras initializers seed {args.seed}; {n_bn} BatchNormalization with random gamma/beta; "
                    f"moving stats calibrated on {args.calib_images} 'calib' photo crops (cumulative, chunks "
                    f"of {CALIB_CHUNK}); classifier centred, pre-softmax logit std {LOGIT_STD}"),
        "keras": keras.__version__,
        "torch": torch.__version__,
        **common.environment(),
        "checks": checks,
        "log_prob_spread_eval": spread,
        "calibration_seconds": round(calib_s, 2),
        "export_seconds": round(export_s, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    common.write_record(args.out.with_name(args.out.stem + ".export.json"), record)
    worst = max(c["max_rel_err"] for c in checks)
    agree = min(c["top1_agreement"] for c in checks)
    hist = record["op_histogram"]
    print(f"[export] {args.out.name}: opset {record['opset']}, {record['nodes']} nodes "
          f"({hist.get('Transpose', 0)} Transpose, {hist.get('Conv', 0)} Conv), "
          f"{record['size'] / 2**20:.1f} MiB, calibration {calib_s:.1f}s, export {export_s:.1f}s; "
          f"ORT vs keras max rel err {worst:.2e}, top-1 agreement {agree:.3f}; "
          f"{spread['distinct_top1']} distinct top-1 classes on {spread['images']} held-out crops; "
          f"weights sha256 {wsha[:12]}", flush=True)
    if args.weights_sha256 and wsha != args.weights_sha256:
        print(f"[export] warning: keras_mobilenetv2 weights sha256 {wsha} differs from the pin "
              f"{args.weights_sha256}; the model is still checked", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
