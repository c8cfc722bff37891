"""fuse: activation, normalization and Gemm patterns, per opset."""

import numpy as np
import onnx
import pytest
from helpers import assert_same, model, ops, rand

import onnxopt
from onnxopt import validate

FUSE = "fuse{verify-fixpoint=true}"


def fuse(m, passes=FUSE):
    return onnxopt.optimize(m, passes=passes, change_guard=True, verify_each=True)


def head(opset):
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


def spread(*shape, seed=0):
    """Inputs across every branch of relu6(x+3): values from -8 to 8."""
    return (8 * np.random.default_rng(seed).uniform(-1, 1, shape)).astype(np.float32)


PADDLE_HARDSWISH = """
    g (float[2,8] x) => (float[2,8] y) {
      three = Constant<value = float {3.0}>()
      zero = Constant<value = float {0.0}>()
      six = Constant<value = float {6.0}>()
      a = Add(x, three)
      c = Clip(a, zero, six)
      m = Mul(x, c)
      y = Div(m, six)
    }"""


@pytest.mark.parametrize("opset, expected", [(12, ["HardSigmoid", "Mul"]), (14, ["HardSwish"])])
def test_hardswish_spelled_out(opset, expected):
    m = model(head(opset) + PADDLE_HARDSWISH)
    out = fuse(m)
    assert ops(out) == expected
    assert out.graph.node[-1].output[0] == "y"
    assert_same(m, out, {"x": spread(2, 8)}, 1e-4)


def test_hardswish_times_scaled_relu6_and_old_clip_attributes():
    m = model(head(10) + """
    g (float[2,8] x) => (float[2,8] y) <float three = {3.0}, float sixth = {0.16666667}> {
      a = Add(three, x)
      c = Clip<min = 0.0, max = 6.0>(a)
      d = Mul(c, sixth)
      y = Mul(d, x)
    }""")
    out = fuse(m)
    assert ops(out) == ["HardSigmoid", "Mul"]
    assert_same(m, out, {"x": spread(2, 8)}, 1e-4)


def test_hardsigmoid_alone_and_x_times_hardsigmoid_at_opset_14():
    m = model(head(14) + """
    g (float[2,8] x, float[2,8] z) => (float[2,8] y, float[2,8] w) <float three = {3.0}, float zero = {0.0}, float six = {6.0}> {
      a = Add(x, three)
      c = Clip(a, zero, six)
      y = Div(c, six)
      h = HardSigmoid<alpha = 0.16666667, beta = 0.5>(z)
      w = Mul(z, h)
    }""")
    out = fuse(m)
    assert sorted(ops(out)) == ["HardSigmoid", "HardSwish"]
    assert_same(m, out, {"x": spread(2, 8), "z": spread(2, 8, seed=1)}, 1e-4)


def test_relu6_plus3_read_elsewhere_is_not_fused():
    m = model(head(14) + """
    g (float[2,8] x) => (float[2,8] y, float[2,8] c) <float three = {3.0}, float zero = {0.0}, float six = {6.0}> {
      a = Add(x, three)
      c = Clip(a, zero, six)
      m = Mul(x, c)
      y = Div(m, six)
    }""")
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ops(m)


ERF_GELU = """
    g (float[2,16] x) => (float[2,16] y) <float sqrt2 = {1.4142135}, float one = {1.0}, float half = {0.5}> {
      d = Div(x, sqrt2)
      e = Erf(d)
      a = Add(e, one)
      m = Mul(x, a)
      y = Mul(m, half)
    }"""


def test_erf_gelu_becomes_gelu_from_opset_20():
    m = model(head(20) + ERF_GELU)
    out = fuse(m)
    assert ops(out) == ["Gelu"]
    assert_same(m, out, {"x": rand(2, 16)}, 1e-4)


def test_erf_gelu_before_opset_20_stays_unless_contrib_is_asked_for():
    m = model(head(17) + ERF_GELU)
    assert ops(onnxopt.optimize(m, passes=FUSE, change_guard=True)) == ops(m)
    out = fuse(m, "fuse{gelu=contrib}")
    assert [(n.op_type, n.domain) for n in out.graph.node] == [("Gelu", "com.microsoft")]
    assert_same(m, out, {"x": rand(2, 16)}, 1e-4)


def test_gelu_off():
    m = model(head(20) + ERF_GELU)
    assert ops(onnxopt.optimize(m, passes="fuse{gelu=off}", change_guard=True)) == ops(m)


LAYERNORM = """
    g (float[2,5,8] x) => (float[2,5,8] y) <float two = {2.0}, float eps = {1e-5}, float[8] gamma, float[8] beta> {
      mu = ReduceMean<axes = [-1]>(x)
      d = Sub(x, mu)
      p = Pow(d, two)
      v = ReduceMean<axes = [-1]>(p)
      ve = Add(v, eps)
      s = Sqrt(ve)
      n = Div(d, s)
      g1 = Mul(n, gamma)
      y = Add(g1, beta)
    }"""


def layernorm_model(opset):
    m = model(head(opset) + LAYERNORM.replace("float[8] gamma, float[8] beta", "float[8] gamma = {1,2,3,4,5,6,7,8}, "
                                                   "float[8] beta = {0,1,0,1,0,1,0,1}"))
    return m


def test_reducemean_layernorm_becomes_layernormalization_at_opset_17():
    m = layernorm_model(17)
    out = fuse(m)
    assert ops(out) == ["LayerNormalization"]
    node = out.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["axis"] == -1 and abs(attrs["epsilon"] - 1e-5) < 1e-12
    assert_same(m, out, {"x": rand(2, 5, 8)}, 1e-4)


def test_layernorm_before_opset_17_is_left_spelled_out():
    m = layernorm_model(13)
    assert ops(onnxopt.optimize(m, passes=FUSE, change_guard=True)) == ops(m)


def test_matmul_add_becomes_gemm_for_rank_2_only():
    m = model(head(13) + """
    g (float[3,4] a, float[2,3,4] b) => (float[3,5] y, float[2,3,5] z) <float[4,5] w, float[5] c> {
      m1 = MatMul(a, w)
      y = Add(m1, c)
      m2 = MatMul(b, w)
      z = Add(m2, c)
    }""".replace("float[4,5] w, float[5] c", "float[4,5] w = {" + ",".join(["0.5"] * 20) + "}, float[5] c = {1,2,3,4,5}"))
    out = fuse(m)
    assert sorted(ops(out)) == ["Add", "Gemm", "MatMul"]
    assert next(n for n in out.graph.node if n.op_type == "Gemm").output[0] == "y"
    assert_same(m, out, {"a": rand(3, 4), "b": rand(2, 3, 4, seed=1)}, 1e-4)


def test_contrib_gelu_runs_in_ort():
    m = model(head(17) + ERF_GELU)
    out = onnxopt.optimize(m, passes="fuse{gelu=contrib}")
    x = rand(2, 16)
    got = validate.run(validate.session(out), {"x": x})["y"]
    want = 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-5)


def test_unknown_rule_family_is_a_usage_error():
    m = model(head(13) + "g (float[2] x) => (float[2] y) { y = Relu(x) }")
    with pytest.raises(onnxopt.UsageError):
        onnxopt.optimize(m, passes="fuse{skip=nonsense}")


def test_default_pipeline_prints_and_parses_back():
    text = str(onnxopt.parse_pipeline("cleanup,fold,fuse{gelu=contrib skip=layout,gemm}"))
    assert str(onnxopt.parse_pipeline(text)) == text
    assert "fuse{gelu=contrib skip=layout,gemm" in text
