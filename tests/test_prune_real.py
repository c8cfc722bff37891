"""`prune` on the real models (fetched by models/fetch.py; skipped when absent).

* PP-OCRv4 rec ships with a few dead channels: lossless prune removes them and the recognised
  strings of rendered text lines do not change (outputs within 1e-5).
* ResNet-50 with channels zeroed the way trainers leave them (network slimming: conv rows and
  BN scale+shift 0; L1-structured: conv rows 0, BN intact) loses exactly the provable ones.
* all-MiniLM-L6-v2 has nothing to prune losslessly; with ``ratio`` its feed-forward channels go.
* ``target`` keeps the calibration output cosine of the direction classifier above the bar
  (after ``fold``: the Paddle export adds its conv biases as Reshape(constant)).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import onnxopt  # noqa: E402
from models import inputs, paths  # noqa: E402
from onnxopt import validate  # noqa: E402

pytestmark = pytest.mark.realmodel


def need(name: str) -> Path:
    if not paths.available(name):
        pytest.skip(f"{name} not in the model cache (python models/fetch.py)")
    return paths.model_path(name)


def run(model, feeds):
    sess = validate.session(model)
    return [validate.run(sess, f) for f in feeds]


def test_ppocrv4_rec_dead_channels_go_and_strings_stay():
    path = need("ppocrv4_rec")
    pytest.importorskip("PIL")
    result = onnxopt.run_pipeline(path, "prune", change_guard=True)
    record = result.report.records[0]
    assert record.changed and record.stats["groups_removed_lossy"] == 0
    assert record.stats["params_after"] < record.stats["params_before"]
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    lines = inputs.text_lines(12)
    feeds = [{name: inputs.ocr_text_line(t)} for t in lines]
    keys = inputs.load_ctc_keys(paths.asset_path("ppocrv4_rec", "keys"))
    for ref, got in zip(run(path, feeds), run(result.model, feeds)):
        (k, a), b = next(iter(ref.items())), got[next(iter(ref))]
        assert validate.diff(k, a, b).max_rel <= 1e-5
        assert inputs.ctc_greedy_decode(a, keys) == inputs.ctc_greedy_decode(b, keys)


_SPACE = re.compile(r"^/(layer\d)/layer\d\.(\d+)/(conv\d)/Conv$")


def _zeroed_resnet(style: str):
    """ResNet-50 with the first quarter of every bottleneck's conv1/conv2 channels zeroed, and
    with style 'slim' also BN scale+shift; returns (model, {conv name: zeroed rows})."""
    m = onnx.load(need("resnet50"))
    inits = {i.name: i for i in m.graph.initializer}
    bn_of = {n.input[0]: n for n in m.graph.node if n.op_type == "BatchNormalization"}
    zeroed = {}
    for n in m.graph.node:
        g = _SPACE.match(n.name)
        if n.op_type != "Conv" or g is None or g.group(3) == "conv3":
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).copy()
        rows = np.arange(w.shape[0] // 4)
        w[rows] = 0
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
        zeroed[n.name] = rows
        if style == "slim":
            bn = bn_of[n.output[0]]
            for slot in (1, 2):
                p = numpy_helper.to_array(inits[bn.input[slot]]).copy()
                p[rows] = 0
                inits[bn.input[slot]].CopyFrom(numpy_helper.from_array(p, bn.input[slot]))
    return m, zeroed


@pytest.mark.slow
@pytest.mark.parametrize("style,border", [("slim", True), ("l1", True), ("l1", False)])
def test_resnet50_trainer_zeroed_channels(style, border):
    m, zeroed = _zeroed_resnet(style)
    result = onnxopt.run_pipeline(m, f"prune{{border={str(border).lower()}}}", change_guard=True)
    layers = result.report.records[0].stats["layers"]
    for name, rows in zeroed.items():
        removed = layers.get(name, {}).get("channels_removed", 0)
        if border or style == "slim" or name.endswith("conv2/Conv"):
            assert removed == len(rows), name          # zero, or a constant folded exactly
        else:
            assert 0 <= removed <= len(rows), name     # l1 conv1: only where relu(BN(0)) == 0
    if not border:
        assert any(layers.get(n, {}).get("channels_removed", 0) < len(r) for n, r in zeroed.items()
                   if n.endswith("conv1/Conv")), "constant channels that meet padding must stay"
    elif style == "l1":
        ops = [n.op_type for n in result.model.graph.node]
        assert ops.count("ConstantOfShape") == 16 and "Shape" not in ops   # 224x224 is fixed
    photos = inputs.imagenet_batch(3, seed=5, split="eval")
    feeds = [{"input": photos[k:k + 1]} for k in range(len(photos))]
    for ref, got in zip(run(m, feeds), run(result.model, feeds)):
        assert validate.diff("logits", ref["logits"], got["logits"]).max_rel <= 1e-5


def test_minilm_nothing_lossless_and_feed_forward_with_ratio(tmp_path):
    path = need("all_minilm_l6_v2")
    result = onnxopt.run_pipeline(path, "prune", change_guard=True)
    assert not result.report.changed
    sentences = inputs.docstring_sentences(12)
    batch = inputs.minilm_batch(sentences[:8], max_length=32)
    np.savez(tmp_path / "calib.npz", **batch)
    lossy = onnxopt.run_pipeline(path, "prune{ratio=0.1 criterion=activation}", tmp_path / "calib.npz")
    stats = lossy.report.records[0].stats
    assert stats["groups_removed_lossy"] > 0 and stats["macs_after"] < stats["macs_before"]
    assert any("intermediate" in name for name in stats["layers"]), stats["layers"].keys()
    assert 0.0 < stats["output_cosine"] <= 1.0
    held_out = inputs.minilm_batch(sentences[8:], max_length=32)
    ref, got = run(path, [held_out])[0], run(lossy.model, [held_out])[0]
    key = next(iter(ref))
    emb_a = inputs.mean_pool(ref[key], held_out["attention_mask"])
    emb_b = inputs.mean_pool(got[key], held_out["attention_mask"])
    cos = (emb_a * emb_b).sum(1) / np.linalg.norm(emb_a, axis=1) / np.linalg.norm(emb_b, axis=1)
    assert cos.min() > 0.5


def test_ppocr_cls_target_keeps_the_cosine(tmp_path):
    path = need("ppocr_cls")
    pytest.importorskip("PIL")
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    lines = inputs.text_lines(8)
    np.savez(tmp_path / "calib.npz", **{name: np.concatenate([inputs.cls_input(t) for t in lines])})
    # the Paddle export adds conv biases as Reshape(constant): fold makes them constants first
    result = onnxopt.run_pipeline(path, "cleanup,fold,prune{ratio=0.5 target=0.99 multiple=8}", tmp_path / "calib.npz")
    record = result.report.records[-1]
    assert record.name == "prune" and record.changed
    assert record.stats["output_cosine"] >= 0.99
    assert 0 < record.stats["share"] < 0.5            # it stopped at the first share under the bar
    loose = onnxopt.run_pipeline(path, "cleanup,fold,prune{ratio=0.5 target=-1 multiple=8}", tmp_path / "calib.npz")
    assert loose.report.records[-1].stats["share"] == 0.5
    assert loose.report.records[-1].stats["params_after"] < record.stats["params_after"]
