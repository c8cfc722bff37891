"""fuse: data-movement chains, no-op arithmetic, Pad folding and NHWC layout propagation."""

import numpy as np
import onnx
from helpers import assert_same, model, ops, rand
from onnx import numpy_helper

import onnxopt

FUSE = "fuse{verify-fixpoint=true}"
HEAD = '<ir_version: 8, opset_import: ["" : 13]>'
rng = np.random.default_rng(0)


def fuse(m, passes=FUSE):
    return onnxopt.optimize(m, passes=passes, change_guard=True, verify_each=True)


def with_weights(text, keep=("x",), **fixed):
    """Graph inputs not in ``keep`` become random (or given) initializers."""
    m = model(text)
    inputs = []
    for inp in m.graph.input:
        if inp.name in keep:
            inputs.append(inp)
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        elem = inp.type.tensor_type.elem_type
        value = fixed[inp.name] if inp.name in fixed else rng.standard_normal(shape)
        value = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem)).reshape(shape)
        m.graph.initializer.append(numpy_helper.from_array(value, inp.name))
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    onnx.checker.check_model(m)
    return m


def test_transpose_pairs_cancel_and_compose():
    m = model(HEAD + """
    g (float[2,3,4] x) => (float[2,3,4] y, float[4,2,3] z) {
      a = Transpose<perm = [0, 2, 1]>(x)
      b = Transpose<perm = [0, 2, 1]>(a)
      y = Relu(b)
      c = Transpose<perm = [1, 0, 2]>(x)
      z = Transpose<perm = [2, 1, 0]>(c)
    }""")
    out = fuse(m)
    assert ops(out) == ["Relu", "Transpose"]
    assert_same(m, out, {"x": rand(2, 3, 4)})


def test_reshape_chains_and_noop_reshape():
    m = with_weights(HEAD + """
    g (float[2,3,4] x, int64[2] s1, int64[3] s2, int64[3] same) => (float[4,3,2] y, float[2,3,4] z) {
      a = Reshape(x, s1)
      f = Flatten<axis = 1>(a)
      y = Reshape(f, s2)
      z0 = Reshape(x, same)
      z = Relu(z0)
    }""", s1=[6, 4], s2=[4, 3, -1], same=[2, -1, 4])
    out = fuse(m)
    assert sorted(ops(out)) == ["Relu", "Reshape"]
    assert_same(m, out, {"x": rand(2, 3, 4)})


def test_reshape_with_copy_dims_is_not_merged_into_its_producer():
    m = with_weights(HEAD + """
    g (float[2,3,4] x, int64[2] s1, int64[3] s2) => (float[6,2,2] y) {
      a = Reshape(x, s1)
      y = Reshape(a, s2)
    }""", s1=[6, 4], s2=[0, 2, 2])
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ["Reshape", "Reshape"]


def test_squeeze_unsqueeze_cancel_and_cast_chains():
    m = with_weights(HEAD + """
    g (float[2,3] x, int64[1] ax, int32[4] i) => (float[2,3] y, int32[4] j, float[4] k) {
      u = Unsqueeze(x, ax)
      s = Squeeze(u, ax)
      y = Relu(s)
      w = Cast<to = 7>(i)
      j0 = Cast<to = 6>(w)
      j = Abs(j0)
      f16 = Cast<to = 10>(i)
      k = Cast<to = 1>(f16)
    }""", keep=("x", "i"), ax=[0])
    out = fuse(m)
    # int32 -> int64 -> int32 is the identity; int32 -> float16 is lossy, so that chain stays
    assert sorted(ops(out)) == ["Abs", "Cast", "Cast", "Relu"]
    assert_same(m, out, {"x": rand(2, 3), "i": np.array([1, -7, 7001, 3], np.int32)})


def test_neutral_arithmetic_and_constant_chains():
    m = with_weights(HEAD + """
    g (float[2,3] x, float one, float[1,1] zero, float[3] a, float[3] b) => (float[2,3] y, float[2,3] z) {
      p = Mul(x, one)
      q = Add(zero, p)
      y = Relu(q)
      m1 = Mul(x, a)
      z = Mul(m1, b)
    }""", one=1.0, zero=[[0.0]])
    out = fuse(m)
    assert sorted(ops(out)) == ["Mul", "Relu"]
    assert_same(m, out, {"x": rand(2, 3)}, 1e-4)


def test_mul_by_one_that_would_broadcast_stays():
    m = with_weights(HEAD + """
    g (float[3] x, float[2,3] one) => (float[2,3] y) {
      y = Mul(x, one)
    }""", one=np.ones((2, 3)))
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ["Mul"]


def test_zero_pad_folds_into_conv_and_average_pool():
    m = with_weights('<ir_version: 8, opset_import: ["" : 13]>' + """
    g (float[1,2,5,5] x, int64[8] pads, float[3,2,3,3] w) => (float[1,3,5,5] y, float[1,2,5,5] z) {
      p = Pad(x, pads)
      y = Conv(p, w)
      q = Pad(x, pads)
      z = AveragePool<kernel_shape = [3, 3]>(q)
    }""", pads=[0, 0, 1, 1, 0, 0, 1, 1])
    out = fuse(m)
    assert sorted(ops(out)) == ["AveragePool", "Conv"]
    assert_same(m, out, {"x": rand(1, 2, 5, 5)}, 1e-4)


def test_reflect_or_channel_pad_stays():
    m = with_weights(HEAD + """
    g (float[1,2,5,5] x, int64[8] pads, int64[8] cpads, float[3,2,3,3] w, float[3,3,3,3] w3) => (float[1,3,5,5] y, float[1,3,3,3] z) {
      p = Pad<mode = "reflect">(x, pads)
      y = Conv(p, w)
      q = Pad(x, cpads)
      z = Conv(q, w3)
    }""", pads=[0, 0, 1, 1, 0, 0, 1, 1], cpads=[0, 1, 0, 0, 0, 0, 0, 0])
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert sorted(ops(out)) == ["Conv", "Conv", "Pad", "Pad"]


NHWC = HEAD + """
g (float[1,8,8,3] x, float[4,3,3,3] w1, float[4] s1, float[4] t1, float[4,1,3,3] w2, float[4] s2, float[4] t2)
  => (float[1,4] y) {
  a = Transpose<perm = [0, 3, 1, 2]>(x)
  c1 = Conv<pads = [1, 1, 1, 1]>(a, w1)
  c1t = Transpose<perm = [0, 2, 3, 1]>(c1)
  m1 = Mul(c1t, s1)
  b1 = Add(m1, t1)
  r1 = Relu(b1)
  r1t = Transpose<perm = [0, 3, 1, 2]>(r1)
  c2 = Conv<pads = [1, 1, 1, 1], group = 4>(r1t, w2)
  c2t = Transpose<perm = [0, 2, 3, 1]>(c2)
  m2 = Mul(c2t, s2)
  b2 = Add(m2, t2)
  res = Add(b2, r1)
  y = ReduceMean<axes = [1, 2], keepdims = 0>(res)
}"""


def test_nhwc_export_keeps_one_transpose_and_folds_its_batchnorm_scales():
    m = with_weights(NHWC)
    out = fuse(m)
    assert ops(out).count("Transpose") == 1  # the input boundary; the output is [N, C] already
    assert "Mul" not in ops(out) and ops(out).count("Add") == 1  # only the residual Add is left
    assert_same(m, out, {"x": rand(1, 8, 8, 3)}, 1e-4)


def test_nhwc_pad_before_the_layout_transpose_folds_into_the_conv():
    m = with_weights(HEAD + """
    g (float[1,7,7,3] x, int64[8] pads, float[4,3,3,3] w) => (float[1,4,4,4] y) {
      p = Pad(x, pads)
      t = Transpose<perm = [0, 3, 1, 2]>(p)
      y = Conv<strides = [2, 2]>(t, w)
    }""", pads=[0, 0, 0, 0, 0, 1, 1, 0])
    out = fuse(m)
    assert ops(out) == ["Transpose", "Conv"]
    conv = out.graph.node[1]
    assert [a.ints for a in conv.attribute if a.name == "pads"] == [[0, 0, 1, 1]]
    assert_same(m, out, {"x": rand(1, 7, 7, 3)}, 1e-5)
