"""fuse, affine family: BatchNorm and per-channel Mul/Add folded into Conv/ConvTranspose/Gemm,
and scalar factors pushed into the weights that produced a MatMul operand."""

import numpy as np
import onnx
from helpers import assert_same, model, ops, rand
from onnx import helper, numpy_helper

import onnxopt

FUSE = "fuse{verify-fixpoint=true}"
rng = np.random.default_rng(0)


def fuse(m, passes=FUSE):
    return onnxopt.optimize(m, passes=passes, change_guard=True, verify_each=True)


def arr(*shape, positive=False):
    a = rng.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def graph_model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def frozen(text, **fixed):
    """An ONNX-text model whose graph inputs other than ``x``/``k`` become random initializers
    (or the given arrays)."""
    m = model(text)
    keep = []
    for inp in m.graph.input:
        if inp.name in ("x", "k"):
            keep.append(inp)
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        value = fixed.get(inp.name, arr(*shape))
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32).reshape(shape), inp.name))
    del m.graph.input[:]
    m.graph.input.extend(keep)
    onnx.checker.check_model(m)
    return m


def bn_inits(c, prefix="bn"):
    return {f"{prefix}_g": arr(c, positive=True), f"{prefix}_b": arr(c), f"{prefix}_m": arr(c),
            f"{prefix}_v": arr(c, positive=True)}


def bn_node(x, y, prefix="bn"):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y],
                            epsilon=1e-3)


def vi(name, shape):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def test_conv_batchnorm_becomes_one_conv_keeping_the_output_name():
    m = graph_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "y")],
                    [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], {"w": arr(4, 3, 3, 3), **bn_inits(4)})
    out = fuse(m)
    assert ops(out) == ["Conv"] and out.graph.node[0].output[0] == "y"
    assert len(out.graph.node[0].input) == 3  # the BN shift became a bias
    assert_same(m, out, {"x": rand(1, 3, 8, 8)}, 1e-4)


def test_grouped_conv_transpose_batchnorm():
    m = graph_model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=2, strides=[2, 2]),
                     bn_node("c", "y")],
                    [vi("x", [1, 4, 5, 5])], [vi("y", [1, 6, 11, 11])],
                    {"w": arr(4, 3, 3, 3), "b": arr(6), **bn_inits(6)})
    out = fuse(m)
    assert ops(out) == ["ConvTranspose"]
    assert_same(m, out, {"x": rand(1, 4, 5, 5)}, 1e-4)


def test_gemm_with_transb_and_beta_then_batchnorm():
    m = graph_model([helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, beta=0.5, alpha=2.0),
                     bn_node("g", "y")],
                    [vi("x", [3, 5])], [vi("y", [3, 4])], {"w": arr(4, 5), "c": arr(4), **bn_inits(4)})
    out = fuse(m)
    assert ops(out) == ["Gemm"]
    assert_same(m, out, {"x": rand(3, 5)}, 1e-4)


def test_conv_then_mul_add_chain_and_affine_before_an_unpadded_conv():
    # Conv -> *s -> +t -> Relu -> *s2 -> +t2 -> 1x1 Conv: both Convs absorb their neighbours
    m = frozen('<ir_version: 8, opset_import: ["" : 13]>' + """
    g (float[1,4,6,6] x, float[4,4,3,3] w1, float[1,4,1,1] s, float[4,1,1] t, float[1] s2, float[4,1,1] t2,
       float[2,4,1,1] w2) => (float[1,2,6,6] y) {
      c = Conv<pads = [1, 1, 1, 1]>(x, w1)
      a = Mul(c, s)
      b = Add(t, a)
      r = Relu(b)
      d = Mul(s2, r)
      e = Sub(d, t2)
      y = Conv(e, w2)
    }""")
    out = fuse(m)
    assert ops(out) == ["Conv", "Relu", "Conv"]
    assert_same(m, out, {"x": rand(1, 4, 6, 6)}, 1e-4)


def test_affine_before_a_padded_conv_stays():
    """With padding the borders would see the shift instead of zeros: not foldable."""
    m = frozen('<ir_version: 8, opset_import: ["" : 13]>' + """
    g (float[1,2,5,5] x, float[1,2,1,1] t, float[3,2,3,3] w) => (float[1,3,5,5] y) {
      a = Add(x, t)
      y = Conv<pads = [1, 1, 1, 1]>(a, w)
    }""")
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ["Add", "Conv"]


def test_conv_output_read_twice_is_not_fused():
    m = frozen('<ir_version: 8, opset_import: ["" : 13]>' + """
    g (float[1,2,4,4] x, float[2,2,1,1] w, float[1,2,1,1] s) => (float[1,2,4,4] y, float[1,2,4,4] z) {
      c = Conv(x, w)
      y = Mul(c, s)
      z = Relu(c)
    }""")
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ops(m)


def test_mul_that_broadcasts_beyond_channels_is_not_folded():
    m = frozen('<ir_version: 8, opset_import: ["" : 13]>' + """
    g (float[1,2,3,3] x, float[2,2,1,1] w, float[1,1,3,1] s) => (float[1,2,3,3] y) {
      c = Conv(x, w)
      y = Mul(c, s)
    }""")
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ["Conv", "Mul"]


def test_standalone_batchnorm_is_left_alone():
    m = graph_model([helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "y")],
                    [vi("x", [1, 3, 4, 4])], [vi("y", [1, 3, 4, 4])], bn_inits(3))
    out = onnxopt.optimize(m, passes=FUSE, change_guard=True)
    assert ops(out) == ["Relu", "BatchNormalization"]


def test_attention_scale_moves_into_the_query_projection():
    m = frozen('<ir_version: 8, opset_import: ["" : 13]>' + """
    g (float[2,5,8] x, float[2,8,5] k, float[8,8] wq, float[8] bq, float[1] scale) => (float[2,5,5] y) {
      q0 = MatMul(x, wq)
      q = Add(q0, bq)
      qt = Transpose<perm = [0, 1, 2]>(q)
      s = MatMul(qt, k)
      y = Mul(s, scale)
    }""", scale=[0.35])
    out = fuse(m)
    assert ops(out) == ["MatMul", "Add", "MatMul"]  # the identity Transpose goes too
    assert_same(m, out, {"x": rand(2, 5, 8), "k": rand(2, 8, 5, seed=1)}, 1e-4)


def test_batchnorm_before_a_gemm_and_scale_after_it():
    m = graph_model([bn_node("x", "n"),
                     helper.make_node("Gemm", ["n", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
                     helper.make_node("Mul", ["g", "s"], ["y"])],
                    [vi("x", [3, 5])], [vi("y", [3, 4])],
                    {"w": arr(4, 5), "c": arr(4), "s": arr(4), **bn_inits(5)})
    out = fuse(m)
    assert ops(out) == ["Gemm"]
    assert_same(m, out, {"x": rand(3, 5)}, 1e-4)
