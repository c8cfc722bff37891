"""`quantize`: QDQ placement that ORT fuses, calibration, selection, and the other modes.

Small models are built with onnx.helper (they need real weights); numerics and fusion are
checked in ONNX Runtime itself: the optimized model ORT writes must contain its int8 kernels.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt import validate
from onnxopt.errors import UsageError
from onnxopt.passes.quantize import calibration, params

RULES = "latency=off"   # timing-free and rule-free: placement tests see every fusable node


def _model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def cnn(opset=13, seed=0):
    """Conv-Relu -> Conv(+residual Add) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32),
        "b1": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32),
        "b2": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "wf": (rng.standard_normal((10, 16)) * 0.3).astype(np.float32),
        "bf": (rng.standard_normal(10) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return _model(nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 10])], inits, opset)


def calib_file(tmp_path, name="x", shape=(24, 3, 16, 16), seed=1, **extra):
    rng = np.random.default_rng(seed)
    path = tmp_path / "calib.npz"
    np.savez(path, **{name: rng.standard_normal(shape).astype(np.float32)}, **extra)
    return path


def fused_ops(m: onnx.ModelProto, tmp_path) -> list[str]:
    """The op types ORT runs after its own graph optimizations (QDQ fusion included)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def quantize(m, calib, options=RULES, **kw):
    res = onnxopt.run_pipeline(m, f"quantize{{{options}}}", calib, **kw)
    return res.model, res.report.records[-1].stats


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_static_without_calibration_data_is_a_usage_error():
    with pytest.raises(UsageError, match="calib"):
        onnxopt.optimize(cnn(), "quantize")


def test_cnn_becomes_int8_kernels_in_ort_and_stays_close(tmp_path):
    m = cnn()
    q, stats = quantize(m, calib_file(tmp_path), change_guard=True, verify_each=True)
    onnx.checker.check_model(q)
    ops = fused_ops(q, tmp_path)
    assert ops.count("QLinearConv") == 2 and "QGemm" in ops and "QLinearAdd" in ops
    assert "Conv" not in ops and "Relu" not in ops  # relus absorbed into the Q ranges
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = validate.run(validate.session(m), {"x": x})["y"]
    got = validate.run(validate.session(q, optimize=True), {"x": x})["y"]
    assert cosine(ref, got) > 0.99
    assert stats["int8_anchors"] == 3 and stats["qdq_ops"] == "standard"


def test_weights_per_channel_int8_and_bias_int32_at_input_times_weight_scale(tmp_path):
    q, _ = quantize(cnn(), calib_file(tmp_path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    conv = next(n for n in q.graph.node if n.name == "conv1")
    dq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    w_dq, b_dq, x_dq = dq[conv.input[1]], dq[conv.input[2]], dq[conv.input[0]]
    assert inits[w_dq.input[0]].dtype == np.int8 and inits[w_dq.input[0]].shape == (16, 3, 3, 3)
    w_scale = inits[w_dq.input[1]]
    assert w_scale.shape == (16,) and helper.get_attribute_value(w_dq.attribute[0]) == 0
    assert inits[b_dq.input[0]].dtype == np.int32
    x_scale = inits[x_dq.input[1]]
    np.testing.assert_allclose(inits[b_dq.input[1]], x_scale * w_scale, rtol=1e-6)


def test_old_opset_is_raised_to_13_for_standard_per_axis_qdq(tmp_path):
    m = cnn(opset=11)
    m.ir_version = 6
    q, stats = quantize(m, calib_file(tmp_path))
    onnx.checker.check_model(q, full_check=True)
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    imports = {i.domain: i.version for i in q.opset_import}
    assert stats["opset_upgraded"] == "11 -> 13" and stats["qdq_ops"] == "standard"
    assert imports[""] == 13 and q.ir_version >= 7 and "com.microsoft" not in imports
    assert qdq and all(n.domain in ("", "ai.onnx") for n in qdq)
    assert fused_ops(q, tmp_path).count("QLinearConv") == 2


def test_opset_10_keeps_its_opset_and_uses_ort_contrib_qdq(tmp_path):
    m = cnn(opset=10)
    q, stats = quantize(m, calib_file(tmp_path))     # the 13 adapters start at opset 11
    onnx.checker.check_model(q)
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    imports = {i.domain: i.version for i in q.opset_import}
    assert "opset_upgraded" not in stats and imports[""] == 10
    assert qdq and all(n.domain == "com.microsoft" for n in qdq) and "com.microsoft" in imports
    assert fused_ops(q, tmp_path).count("QLinearConv") == 2


def test_opset_9_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="opset 9"):
        quantize(cnn(opset=9), calib_file(tmp_path))


def test_matmul_with_bias_becomes_qgemm_and_activation_matmul_int8(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((32, 64)) * 0.2).astype(np.float32),
             "b": (rng.standard_normal(64) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             helper.make_node("Transpose", ["hb"], ["ht"], perm=[0, 2, 1], name="t"),
             helper.make_node("MatMul", ["hb", "ht"], ["y"], name="scores")]
    m = _model(nodes, [_vi("x", [1, 8, 32])], [_vi("y", [1, 8, 8])], inits)
    q, stats = quantize(m, calib_file(tmp_path, shape=(16, 1, 8, 32)), verify_each=True)
    ops = fused_ops(q, tmp_path)
    assert "QGemm" in ops and ("QLinearMatMul" in ops or "MatMulIntegerToFloat" in ops)
    assert "MatMul" not in ops and stats["int8_anchors"] == 2


def test_attention_mask_sentinel_tensors_stay_float(tmp_path):
    """(1 - mask) * -3.4e38 added to scores, as BERT exports do: no 8-bit range holds it."""
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((16, 16)) * 0.3).astype(np.float32),
             "one": np.array(1.0, np.float32), "big": np.array(np.finfo(np.float32).min, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="scores"),
             helper.make_node("Sub", ["one", "mask"], ["inv"]),
             helper.make_node("Mul", ["inv", "big"], ["bias"], name="maskmul"),
             helper.make_node("Add", ["s", "bias"], ["masked"], name="maskadd"),
             helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]
    m = _model(nodes, [_vi("x", [1, 4, 16]), _vi("mask", [1, 4, 16])], [_vi("y", [1, 4, 16])], inits)
    mask = (rng.random((12, 1, 4, 16)) > 0.3).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((12, 1, 4, 16)).astype(np.float32), mask=mask)
    q, stats = quantize(m, path)
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {"bias", "masked", "inv"}
    assert stats["tensors_left_float_extreme_values"] >= 2
    feeds = {"x": rng.standard_normal((1, 4, 16)).astype(np.float32), "mask": mask[0]}
    ref = validate.run(validate.session(m), feeds)["y"]
    got = validate.run(validate.session(q, optimize=True), feeds)["y"]
    assert np.all(np.isfinite(got)) and cosine(ref, got) > 0.99


def test_histogram_percentile_matches_numpy_and_is_streamed():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(20000).astype(np.float32) * (1 + k) for k in range(5)]
    s = calibration.TensorStats()
    for c in chunks:
        s.update(c, histogram=True)  # the range grows chunk by chunk: bins merge, no data kept
    everything = np.concatenate(chunks)
    assert s.lo == everything.min() and s.hi == everything.max() and s.count == everything.size
    lo, hi = calibration.choose_range(s, "percentile", 99.0)
    tol = 2 * s.width + 0.02 * np.abs(everything).max()
    assert abs(hi - np.percentile(everything, 99.5)) < tol
    assert abs(lo - np.percentile(everything, 0.5)) < tol
    assert calibration.choose_range(s, "minmax", 99.0) == (everything.min(), everything.max())


def test_sentinel_and_nonfinite_values_mark_a_tensor_unusable():
    s = calibration.TensorStats()
    s.update(np.array([0.5, np.finfo(np.float32).min], np.float32), histogram=True)
    assert s.extreme and not s.usable
    t = calibration.TensorStats()
    t.update(np.array([0.5, np.inf], np.float32), histogram=False)
    assert t.nonfinite and not t.usable


def test_activation_params_cover_range_and_keep_zero_exact():
    p = params.activation_params(-1.0, 3.0)
    lo, hi = p.representable()
    assert lo <= -1.0 + p.scale and hi >= 3.0 - p.scale and p.dtype == "uint8"
    assert params.quantize_array(np.array([0.0], np.float32), p)[0] == p.zero_point
    assert params.makes_redundant(params.activation_params(0.0, 5.0), "Relu", 0.0, None)
    assert params.makes_redundant(params.activation_params(0.0, 6.0), "Clip", 0.0, 6.0)
    assert not params.makes_redundant(params.activation_params(-1.0, 6.0), "Clip", 0.0, 6.0)


def test_pow2_scales_are_powers_of_two_and_fidelity_is_reported(tmp_path):
    q, stats = quantize(cnn(), calib_file(tmp_path), options=f"{RULES} scale=pow2")
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    scales = [inits[n.input[1]] for n in q.graph.node if n.op_type == "DequantizeLinear"]
    for s in scales:
        exponent = np.log2(s.astype(np.float64))
        np.testing.assert_allclose(exponent, np.round(exponent), atol=1e-9)
    assert 0.9 < stats["score"]["chosen"] <= 1.0
    assert "pow2_cost" in stats


def test_per_node_report_names_every_int8_node(tmp_path):
    _, stats = quantize(cnn(), calib_file(tmp_path))
    rows = {r["node"]: r for r in stats["per_node"]}
    assert {"conv1", "conv2", "fc"} <= set(rows)
    assert all(0.9 < rows[n]["cosine"] <= 1.0 + 1e-9 for n in ("conv1", "conv2", "fc"))
    assert rows["conv1"]["int8"] is True and "max_rel" in rows["conv1"]


def test_sensitive_node_is_kept_float_to_meet_the_target(tmp_path):
    """A conv whose input range is blown up by rare outliers cannot be 8-bit without wrecking
    typical inputs; with a strict target the selection keeps it (and only what it must) float.
    The outliers sit in calibration samples past the first eval-samples, which score."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 1, 3, 16, 16)).astype(np.float32)
    x[16:, :, 0, 0, 0] = 5000.0
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    q, stats = quantize(cnn(), path, options=f"{RULES} calibration=minmax target=0.999 eval-samples=16 bias-correction=off")
    assert stats["score"]["chosen"] >= 0.999 > stats["score"]["all_int8"]
    floats = {r["node"] for r in stats["per_node"] if not r["int8"]}
    assert "conv1" in floats and stats["int8_anchors"] >= 1


def test_latency_rules_keep_depthwise_and_tiny_products_float(tmp_path):
    """Known from ORT's CPU kernels, no timing needed: depthwise QLinearConv is slower than
    float, and a 1x10 Gemm on a float input saves nothing in int8. Their weights are still
    stored as int8."""
    rng = np.random.default_rng(0)
    inits = {"wd": (rng.standard_normal((32, 1, 3, 3)) * 0.3).astype(np.float32),
             "wp": (rng.standard_normal((32, 32, 1, 1)) * 0.3).astype(np.float32),
             "wf": (rng.standard_normal((10, 32)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wp"], ["p"], name="pw"),
             helper.make_node("Conv", ["p", "wd"], ["d"], group=32, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("GlobalAveragePool", ["d"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1, name="fc")]
    m = _model(nodes, [_vi("x", [1, 32, 24, 24])], [_vi("y", [1, 10])], inits)
    q, stats = quantize(m, calib_file(tmp_path, shape=(8, 1, 32, 24, 24)), options="latency=rules")
    reasons = {r["node"]: r.get("reason") for r in stats["per_node"]}
    assert "depthwise" in reasons["dw"] and "tiny" in reasons["fc"] and reasons["pw"] is None
    assert stats["weights_stored_int8_float_compute"] == 2
    int8_inits = [i for i in q.graph.initializer if i.data_type == TensorProto.INT8]
    assert sum(int(np.prod(i.dims)) for i in int8_inits) >= 32 * 9 + 32 * 32 + 10 * 32


def test_pooling_after_an_int8_conv_runs_int8_because_its_dq_converts_fewer_values(tmp_path):
    """Conv(int8) -> GlobalAveragePool -> Flatten -> tiny Gemm: the pool's float form needs a
    DQ of 32x24x24 values, its int8 form a DQ of 32. Counting conversions alone (one each way)
    kept it float; weighing them by calibrated size runs it int8, as ORT's own quantizer does.
    The tiny Gemm, not worth an int8 island, then joins too (through the exact pass-through
    Flatten): QGemm reads int8 weights and its input needs no DQ."""
    rng = np.random.default_rng(0)
    inits = {"wp": (rng.standard_normal((32, 16, 3, 3)) * 0.3).astype(np.float32),
             "wf": (rng.standard_normal((10, 32)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wp"], ["p"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1, name="fc")]
    m = _model(nodes, [_vi("x", [1, 16, 24, 24])], [_vi("y", [1, 10])], inits)
    calib = calib_file(tmp_path, shape=(8, 1, 16, 24, 24))
    q, stats = quantize(m, calib, options="latency=rules")
    int8 = {r["node"] for r in stats["per_node"] if r["int8"]}
    assert {"conv", "gap", "flatten", "fc"} <= int8 and stats["tiny_products_joined_int8"] == 1
    fused = fused_ops(q, tmp_path)
    assert {"QLinearGlobalAveragePool", "QLinearConv", "QGemm"} <= set(fused) and "Gemm" not in fused
    x = np.load(calib)["x"][0]
    ref = validate.run(validate.session(m), {"x": x})["y"]
    got = validate.run(validate.session(q), {"x": x})["y"]
    assert cosine(ref, got) > 0.999


def test_a_pass_through_leading_to_no_int8_node_stays_float(tmp_path):
    """Conv(int8) -> Reshape -> Softmax(float): the Reshape could run on uint8 at the same
    conversion cost (its DQ after instead of before), which leads nowhere; the plan keeps
    it float, DQ -> Reshape -> Softmax, not DQ -> Reshape -> Q -> DQ -> Softmax."""
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((32, 16, 3, 3)) * 0.3).astype(np.float32),
             "shape": np.array([1, 32, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="flat"),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1, name="softmax")]
    m = _model(nodes, [_vi("x", [1, 16, 24, 24])], [_vi("y", [1, 32, 576])], inits)
    q, stats = quantize(m, calib_file(tmp_path, shape=(8, 1, 16, 24, 24)), options="latency=rules metric=cosine")
    assert stats["int8_anchors"] == 1
    producer = {o: n for n in q.graph.node for o in n.output}
    reshape = next(n for n in q.graph.node if n.op_type == "Reshape")
    assert producer[reshape.input[0]].op_type == "DequantizeLinear"
    assert producer[next(n for n in q.graph.node if n.op_type == "Softmax").input[0]] is reshape


def test_detector_head_concat_of_boxes_and_scores_keeps_the_scores(tmp_path):
    """A YOLO-style output concatenates box coordinates (hundreds) and class scores (0..1).
    One activation scale for the Concat would round every score to 0 or to one step of ~2.5
    while the raw output's cosine stays near 1; the planner must leave that Concat float, so
    each part keeps its own scale."""
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((12, 8, 3, 3)) * 0.3).astype(np.float32),
             "shape": np.array([1, 12, 64], np.int64), "stride": np.array([320.0], np.float32),
             "s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "s12": np.array([12], np.int64),
             "ax": np.array([1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="flat"),
             helper.make_node("Slice", ["r", "s0", "s4", "ax"], ["b"], name="box_rows"),
             helper.make_node("Mul", ["b", "stride"], ["boxes"], name="scale_boxes"),
             helper.make_node("Slice", ["r", "s4", "s12", "ax"], ["l"], name="score_rows"),
             helper.make_node("Sigmoid", ["l"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1, name="head")]
    m = _model(nodes, [_vi("x", [1, 8, 16, 16])], [_vi("y", [1, 12, 64])], inits)
    calib = calib_file(tmp_path, shape=(16, 1, 8, 16, 16))
    q, stats = quantize(m, calib)
    assert stats["int8_anchors"] == 1
    x = np.load(calib)["x"][3]
    ref = validate.run(validate.session(m), {"x": x})["y"]
    got = validate.run(validate.session(q), {"x": x})["y"]
    assert np.max(np.abs(ref[:, 4:] - got[:, 4:])) < 0.03          # scores: a few uint8 steps of 1/255
    assert np.max(np.abs(ref[:, :4] - got[:, :4])) < 0.03 * np.max(np.abs(ref[:, :4]))


def test_exclude_keeps_named_nodes_and_op_types_float(tmp_path):
    q, stats = quantize(cnn(), calib_file(tmp_path), options=f"{RULES} exclude=conv1,Gemm")
    floats = {r["node"]: r["reason"] for r in stats["per_node"] if not r["int8"]}
    assert floats == {"conv1": "excluded by option", "fc": "excluded by option"}
    inits = {i.name: i for i in q.graph.initializer}
    for name in ("conv1", "fc"):   # the user's float nodes keep their float32 weights as given
        node = next(n for n in q.graph.node if n.name == name)
        assert inits[node.input[1]].data_type == TensorProto.FLOAT


def test_weights_too_sensitive_for_int8_are_stored_float16_when_the_target_allows(tmp_path):
    from onnxopt import ir
    from onnxopt.passes.quantize.compress import store_half

    m = cnn()
    graph = ir.to_graph(ir.from_proto(m))
    conv2 = next(n for n in graph.nodes if n.name == "conv2")
    assert store_half(graph, [conv2]) == 1
    out = ir.to_proto(graph, ir.header_of(m))
    cast = next(n for n in out.graph.node if n.op_type == "Cast")
    assert {i.name: i.data_type for i in out.graph.initializer}[cast.input[0]] == TensorProto.FLOAT16
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = validate.run(validate.session(m), {"x": x})["y"]
    got = validate.run(validate.session(out), {"x": x})["y"]
    assert validate.diff("y", ref, got).max_rel < 5e-3 and not np.array_equal(ref, got)
    # in the pass: a target that int8 storage misses but float16 storage meets
    q, stats = quantize(m, calib_file(tmp_path), options=f"{RULES} target=0.999995 metric=cosine")
    assert stats["int8_anchors"] == 2 and stats["weights_stored_fp16_float_compute"] == 1
    assert "weights_stored_int8_float_compute" not in stats and stats["score"]["chosen"] >= 0.999995
    f16 = [i for i in q.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert len(f16) == 1


def test_dynamic_mode_needs_no_data_and_ort_fuses_it(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((32, 64)) * 0.2).astype(np.float32),
             "w2": (rng.standard_normal((64, 16)) * 0.2).astype(np.float32),
             "b2": (rng.standard_normal(16) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    m = _model(nodes, [_vi("x", [4, 32])], [_vi("y", [4, 16])], inits)
    q, stats = quantize(m, None, options="mode=dynamic", verify_each=True)
    assert stats["matmuls_int8"] == 2
    ops = fused_ops(q, tmp_path)
    assert "MatMul" not in ops and "Gemm" not in ops
    assert any(op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat") for op in ops)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    assert cosine(validate.run(validate.session(m), {"x": x})["y"],
                  validate.run(validate.session(q, optimize=True), {"x": x})["y"]) > 0.99


def test_fp16_mode_keeps_io_types_and_guards_overflow(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((16, 16)) * 0.3).astype(np.float32),
             "k": np.array(1000.0, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Mul", ["h", "k"], ["big"]),          # |big| ~ 1e3 * ... > 30000
             helper.make_node("Mul", ["big", "k"], ["bigger"]),
             helper.make_node("ReduceMean", ["bigger"], ["y"], axes=[1], keepdims=1)]
    m = _model(nodes, [_vi("x", [2, 16])], [_vi("y", [2, 1])], inits)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((8, 2, 16)).astype(np.float32) * 10)
    q, stats = quantize(m, path, options="mode=fp16")
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert q.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert stats["kept_float32_range"] >= 1 and stats["nodes_fp16"] >= 1
    x = rng.standard_normal((2, 16)).astype(np.float32) * 10
    ref = validate.run(validate.session(m), {"x": x})["y"]
    got = validate.run(validate.session(q), {"x": x})["y"]
    assert np.all(np.isfinite(got)) and np.allclose(ref, got, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_options_are_validated():
    with pytest.raises(UsageError):
        onnxopt.optimize(cnn(), "quantize{percentile=150}")
    with pytest.raises(UsageError):
        onnxopt.optimize(cnn(), "quantize{mode=int4}")


def test_opset_upgrade_adapters_keep_the_function(tmp_path):
    """Opset 11 -> 13 rewrites (attributes that became inputs, Softmax's axis semantics) used
    when the framework lets the pass raise the opset for standard per-axis Q/DQ."""
    import onnx_graphsurgeon as gs

    from onnxopt.passes.quantize import opset as qopset

    m = onnx.parser.parse_model('''<ir_version: 7, opset_import: ["" : 11]>
    g (float[2,1,3,4] x) => (float[2,3,4] a, float[2,1,3,4] b, float[2,1,3,2] c, float[2,1,1,1] d, float[1,2,1,3,4] e) {
      a = Squeeze<axes = [1]>(x)
      b = Softmax<axis = 2>(x)
      c, c2 = Split<axis = 3, split = [2, 2]>(x)
      d = ReduceSum<axes = [2, 3], keepdims = 1>(x)
      e = Unsqueeze<axes = [0]>(x)
    }''')
    onnx.checker.check_model(m)
    g = gs.import_onnx(m)
    assert qopset.upgradable(g)
    qopset.upgrade(g, 11)
    up = gs.export_onnx(g)
    del up.opset_import[:]
    up.opset_import.extend([helper.make_opsetid("", 13)])
    onnx.checker.check_model(up, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 4)).astype(np.float32)
    ref = validate.run(validate.session(m), {"x": x})
    got = validate.run(validate.session(up), {"x": x})
    for name in ref:
        np.testing.assert_allclose(ref[name], got[name], rtol=1e-6, atol=1e-6)


def test_cli_refuses_static_without_calib_in_one_line_and_reports_per_node(tmp_path, capsys):
    import json

    from onnxopt.cli import main

    src = tmp_path / "cnn.onnx"
    onnx.save(cnn(), src)
    out = tmp_path / "q.onnx"
    code = main(["optimize", str(src), "-o", str(out), "-p", "quantize"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--calib" in lines[0]
    report = tmp_path / "report.json"
    code = main(["optimize", str(src), "-o", str(out), "-p", f"quantize{{{RULES}}}", "--calib",
                 str(calib_file(tmp_path)), "--report", str(report)])
    capsys.readouterr()
    assert code == 0 and out.exists()
    text = report.read_text()
    assert "per_node" in text and "conv1" in text and json.loads(text)


def test_batchnorm_whose_shift_comes_through_an_identity_still_folds(tmp_path):
    # torch's exporter writes Identity(shared initializer) for equal tensors: a trained ResNet
    # block's two BatchNorm shifts (downsample and bn3) stay equal, so one reaches its BN that way
    rng = np.random.default_rng(0)
    inits = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "w2": (rng.standard_normal((8, 3, 1, 1)) * 0.3).astype(np.float32),
             "g1": rng.uniform(0.5, 1.5, 8).astype(np.float32), "g2": rng.uniform(0.5, 1.5, 8).astype(np.float32),
             "shift": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "m": (rng.standard_normal(8) * 0.1).astype(np.float32), "v": rng.uniform(0.5, 2, 8).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g1", "shift", "m", "v"], ["n1"], name="bn1"),
             helper.make_node("Identity", ["shift"], ["shift_again"], name="dedup"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
             helper.make_node("BatchNormalization", ["c2", "g2", "shift_again", "m", "v"], ["n2"], name="bn2"),
             helper.make_node("Add", ["n1", "n2"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    m = _model(nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 8, 16, 16])], inits)
    q, stats = quantize(m, calib_file(tmp_path))
    assert stats["prepared"]["passthrough_removed"] == 1 and stats["prepared"]["affine_folded_into_conv"] == 2
    ops = fused_ops(q, tmp_path)
    assert "BatchNormalization" not in ops and ops.count("QLinearConv") == 2 and "QLinearAdd" in ops


def test_latency_question_is_decided_once_every_round_is_clearly_on_one_side():
    from onnxopt.passes.quantize.latency import decided
    assert not decided([0.5] * 7, 0.05, 30)                  # too few rounds yet
    assert decided([0.5] * 8, 0.05, 30) and decided([1.2] * 8, 0.05, 30)
    assert not decided([0.5] * 7 + [0.97], 0.05, 30)         # one round near 1: keep measuring
    assert not decided([0.9, 1.1] * 4, 0.05, 30)
    # 16 of 30 planned rounds below 1: the median of all 30 is below 1, whatever comes next
    assert not decided([0.97] * 15 + [1.01] * 3, 0.05, 30)
    assert decided([0.97] * 16 + [1.01] * 3, 0.05, 30) and decided([1.01] * 16, 0.05, 30)


def test_latency_guard_stops_measuring_a_clear_win_early():
    """The guard only needs to know which side of 1 the ratio is on: a candidate many times
    faster than the base is settled after 8 rounds instead of timing all 30."""
    from onnxopt.passes.quantize.latency import paired_ratio
    rng = np.random.default_rng(0)
    weights = {f"w{i}": (rng.standard_normal((256, 256)) * 0.05).astype(np.float32) for i in range(4)}
    chain = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 3 else "y"])
             for i in range(4)]
    heavy = _model(chain, [_vi("x", [64, 256])], [_vi("y", [64, 256])], weights)
    light = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [64, 256])], [_vi("y", [64, 256])], {})
    feeds = {"x": rng.standard_normal((64, 256)).astype(np.float32)}
    early = paired_ratio(heavy, light, feeds, rounds=30, warmup=1, stop_margin=0.05)
    full = paired_ratio(heavy, light, feeds, rounds=30, warmup=1)
    assert early.rounds == 8 and full.rounds == 30
    assert early.ratio < 0.5
