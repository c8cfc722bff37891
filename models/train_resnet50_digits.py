"""Train our ResNet-50 on real data (scikit-learn's handwritten digits) and export it to ONNX:
a *trained* ResNet-50 to quantize, where the cached `resnet50` is only seeded.

No pretrained ImageNet ResNet-50 can be had offline; a trained one on a small real task is the
closest stand-in: its outputs have the confident top-1 margins of a trained classifier, which a
seeded network does not. The data are the 1797 8x8 digits of sklearn/datasets/data/digits.csv.gz
(from the scikit-learn wheel pinned in registry.json, or --digits FILE), upsampled to 64x64 (bilinear), grey replicated to
three channels, normalised with the ImageNet mean/std. Split by row: 0-1199 train, 1200-1796
held out (never seen in training).

Network: models/export_resnet50.py's ResNet-50 with a 10-way fc, torch's default init, Adam
(lr 1e-3), batch 32, EPOCHS epochs, seed 0. Export as export_resnet50.py does (BatchNorm kept
unfused, opset 17, input ``input`` [N, 3, 64, 64], output ``logits`` [N, 10]). Writes
<out> and <out stem>.data.npz (``calib``: 48 training images, ``held``: the 597 held-out images,
``held_labels``) and prints the held-out accuracy. Runs in the export venv (about 5-10 CPU
minutes on 2 cores):

    ~/.cache/onnxopt/export-venv/bin/python models/train_resnet50_digits.py \
        --out ~/.cache/onnxopt/models/resnet50_digits.onnx
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export_common as common  # models/export_common.py
import numpy as np
import torch
from export_resnet50 import ResNet50
from torch import nn

EPOCHS = 4
SIZE = 64
TRAIN = 1200
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


DIGITS_IN_WHEEL = "sklearn/datasets/data/digits.csv.gz"
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"


def fetch_digits(directory: Path) -> Path:
    """digits.csv.gz out of the scikit-learn wheel pinned in registry.json (pip download)."""
    import json
    import subprocess
    import zipfile

    src = json.loads((HERE / "registry.json").read_text())["sources"]["scikit-learn"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    "-d", str(directory), f"{src['package']}=={src['version']}"], check=True)
    wheel = directory / src["wheel"]
    if common.sha256_file(wheel) != src["wheel_sha256"]:
        raise SystemExit(f"{wheel.name}: sha256 differs from the pin in registry.json")
    out = directory / "digits.csv.gz"
    out.write_bytes(zipfile.ZipFile(wheel).read(DIGITS_IN_WHEEL))
    return out


def load_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.float32)
    return rows[:, :64].reshape(-1, 1, 8, 8) / 16.0, rows[:, 64].astype(np.int64)


def preprocess(x: np.ndarray) -> np.ndarray:
    t = nn.functional.interpolate(torch.from_numpy(x), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((t.numpy().repeat(3, axis=1) - MEAN) / STD).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--digits", type=Path, help="sklearn/datasets/data/digits.csv.gz (default: from the "
                    "scikit-learn wheel pinned in registry.json, downloaded with pip)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()
    import onnx

    t0 = time.perf_counter()
    torch.manual_seed(0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp_dir:
        digits = args.digits or fetch_digits(Path(tmp_dir))
        if common.sha256_file(digits) != DIGITS_SHA256:
            return common.refuse("train_resnet50_digits", [f"{digits}: sha256 differs from {DIGITS_SHA256}"])
        raw, labels = load_digits(digits)
    x = preprocess(raw)
    xt, yt = torch.from_numpy(x[:TRAIN]), torch.from_numpy(labels[:TRAIN])
    model = ResNet50(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(TRAIN, generator=g)
        total = 0.0
        for k in range(0, TRAIN, 32):
            idx = order[k:k + 32]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(x[TRAIN:])).argmax(1).numpy()
        acc = float(np.mean(pred == labels[TRAIN:]))
        print(f"[train] epoch {epoch + 1}: loss {total / TRAIN:.4f}, held-out accuracy {acc:.4f}", flush=True)
    tmp = common.temp_beside(args.out)
    try:
        with torch.no_grad():
            torch.onnx.export(model, (xt[:1],), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                              dynamo=False, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
        m = onnx.load(str(tmp))
        onnx.checker.check_model(m, full_check=True)
        got = common.ort_session(tmp).run(["logits"], {"input": x[TRAIN:]})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x[TRAIN:])).numpy()
        check = common.compare(ref, got)
        if not (check["finite"] and check["max_rel_err"] <= 1e-4 and check["top1_agreement"] >= 0.99):
            return common.refuse("train_resnet50_digits", [f"ORT disagrees with torch: {check}"])
        common.publish(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    calib = x[rng.choice(TRAIN, 48, replace=False)]
    np.savez(args.out.with_name(args.out.stem + ".data.npz"), calib=calib, held=x[TRAIN:], held_labels=labels[TRAIN:])
    probs = np.exp(got - got.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    record = {**common.record_head("resnet50_digits", args.out, 0, "", "", m),
              "task": "sklearn digits 8x8 -> 64x64, 10 classes", "epochs": args.epochs,
              "held_out_accuracy": acc, "median_top1_probability": float(np.median(probs.max(1))),
              "ort_vs_torch": check, "torch": torch.__version__, **common.environment(),
              "total_seconds": round(time.perf_counter() - t0, 1)}
    common.write_record(args.out.with_name(args.out.stem + ".export.json"), record)
    print(f"[train] {args.out.name}: held-out accuracy {acc:.4f}, median top-1 probability "
          f"{record['median_top1_probability']:.3f}, {record['total_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
