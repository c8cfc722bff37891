"""What `cleanup,fold,fuse` leaves of the real exports' op soup (structure; the numerics of the
default pipeline on real inputs are tests/test_real_models.py's)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import paths  # noqa: E402

import onnxopt  # noqa: E402

PIPELINE = "cleanup,fold,fuse"


@pytest.fixture(scope="module")
def optimized():
    cache: dict[str, tuple[Counter, onnx.ModelProto]] = {}

    def get(name: str):
        if not paths.available(name):
            pytest.skip(f"real model {name!r} not fetched (python models/fetch.py)")
        if name not in cache:
            out = onnxopt.optimize(paths.model_path(name), passes=PIPELINE)
            cache[name] = (Counter(n.op_type for n in out.graph.node), out)
        return cache[name]

    return get


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["ppocrv4_det", "ppocrv4_rec", "ppocr_cls", "resnet50"])
def test_batchnorm_and_hardswish_spellings_are_gone(name, optimized):
    ops, _ = optimized(name)
    assert ops["BatchNormalization"] == 0
    assert ops["Clip"] == 0 and ops["Div"] <= 5  # the Paddle hard-swish Add/Clip/Mul/Div quartets
    assert ops["Constant"] == 0


@pytest.mark.realmodel
def test_keras_nhwc_export_keeps_one_transpose_and_no_batchnorm_arithmetic(optimized):
    ops, _ = optimized("keras_mobilenetv2")
    assert ops["Transpose"] == 1  # at the NHWC input; the [N, classes] output needs none
    assert ops["Sub"] == 0 and ops["Mul"] == 0  # every BN scale/shift is inside a Conv
    assert ops["Cast"] == 0 and ops["Pad"] == 0


@pytest.mark.realmodel
def test_minilm_reshapes_no_longer_read_shape_chains(optimized):
    _, model = optimized("all_minilm_l6_v2")
    inits = {t.name for t in model.graph.initializer}
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    constant_targets = [n for n in reshapes if n.input[1] in inits]
    # all but the two of the attention-mask prologue, whose shapes are data-dependent
    assert len(reshapes) - len(constant_targets) <= 2
    assert sum(n.op_type == "Shape" for n in model.graph.node) <= 4
