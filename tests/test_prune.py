"""Golden tests for `prune`: one per coupling of the channel analysis, plus what must stay.

Each model is ONNX text with numpy weights (prune_nets.py); every run goes through the change
guard and verify-each (EXACT: outputs within 1e-5 of the original), and the tests assert which
weight rows/columns, parameters and attributes were cut.
"""

import numpy as np
import onnx
import pytest
from helpers import assert_same, ops, rand
from prune_nets import attr, bn, init, net, node_by_output, prune, vec, w, weight

import onnxopt
from onnxopt import ir
from onnxopt.errors import UsageError
from onnxopt.pass_base import Numerics, PassContext
from onnxopt.passes.prune import Prune
from onnxopt.pipeline import parse


def conv_relu_conv(w1, b1, w2, b2, pads1="0, 0, 0, 0", pads2="0, 0, 0, 0", k2=1, c=8):
    """x -> Conv(3x3) -> Relu -> Conv(k2 x k2) -> y, the smallest net with one prunable layer."""
    return net(f"""
    g (float[1,3,8,8] x, float[{c},3,3,3] w1, float[{c}] b1, float[4,{c},{k2},{k2}] w2, float[4] b2)
      => (float[1,4,H,W] y) {{
      c1 = Conv<pads = [{pads1}]>(x, w1, b1)
      r1 = Relu(c1)
      y = Conv<pads = [{pads2}]>(r1, w2, b2)
    }}""", w1=w1, b1=b1, w2=w2, b2=b2)


X8 = {"x": rand(1, 3, 8, 8)}


# ---------------------------------------------------------------------------------------------
# lossless: zero channels


def test_zero_rows_and_bias_are_removed_with_the_consumer_columns():
    m = conv_relu_conv(w(8, 3, 3, 3, zero=(1, 5)), vec(8, zero=(1, 5)), w(4, 8, 1, 1, seed=1), vec(4, seed=1))
    out, rec = prune(m)
    assert weight(out, "c1").shape == (6, 3, 3, 3) and weight(out, "c1", 2).shape == (6,)
    assert weight(out, "y").shape == (4, 6, 1, 1)
    np.testing.assert_array_equal(weight(out, "y"), np.delete(w(4, 8, 1, 1, seed=1), [1, 5], axis=1))
    assert rec.stats["groups_removed"] == 2 and rec.stats["groups_removed_lossy"] == 0
    assert rec.stats["params_before"] - rec.stats["params_after"] == 2 * (27 + 1) + 2 * 4
    assert rec.stats["layers"]["c1"] == {"channels": "8->6", "channels_removed": 2, "params_removed": 56}
    assert rec.stats["macs_after"] < rec.stats["macs_before"]
    assert_same(m, out, X8)


def test_nothing_to_prune_leaves_the_model_unchanged():
    m = conv_relu_conv(w(8, 3, 3, 3), vec(8), w(4, 8, 1, 1, seed=1), vec(4, seed=1))
    out, rec = prune(m)
    assert rec.changed is False
    round_trip = ir.to_proto(ir.to_graph(ir.from_proto(m)), ir.header_of(m))
    assert onnx.printer.to_text(out.graph) == onnx.printer.to_text(round_trip.graph)
    graph = ir.to_graph(ir.from_proto(m))
    before = ir.fingerprint(graph)
    assert Prune().run(graph, PassContext(opsets={"": 17}, ir_version=8)).changed is False
    assert ir.fingerprint(graph) == before


def test_batchnorm_with_zero_scale_and_shift_removes_the_channel_despite_nonzero_rows():
    p = bn(8, zero=(0, 6))
    m = net("""
    g (float[1,3,8,8] x, float[8,3,3,3] w1, float[8] scale, float[8] shift, float[8] mean, float[8] var,
       float[4,8,3,3] w2) => (float[1,4,8,8] y) {
      c1 = Conv<pads = [1, 1, 1, 1]>(x, w1)
      n1 = BatchNormalization(c1, scale, shift, mean, var)
      r1 = Relu(n1)
      y = Conv<pads = [1, 1, 1, 1]>(r1, w2)
    }""", w1=w(8, 3, 3, 3), w2=w(4, 8, 3, 3, seed=1), **p)
    out, rec = prune(m)
    assert weight(out, "c1").shape == (7 - 1, 3, 3, 3)
    for slot in (1, 2, 3, 4):
        assert weight(out, "n1", slot).shape == (6,)
    np.testing.assert_array_equal(weight(out, "n1", 1), np.delete(p["scale"], [0, 6]))
    assert weight(out, "y").shape == (4, 6, 3, 3)
    assert_same(m, out, X8)


# ---------------------------------------------------------------------------------------------
# lossless: constant channels


def test_constant_channel_folds_into_a_1x1_conv_bias():
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[3], b1[3] = 0, 0.75                          # channel 3 is the constant relu(0.75)
    m = conv_relu_conv(w1, b1, w(4, 8, 1, 1, seed=1), vec(4, seed=1))
    out, rec = prune(m)
    assert weight(out, "y").shape == (4, 7, 1, 1)
    expected = vec(4, seed=1) + 0.75 * w(4, 8, 1, 1, seed=1)[:, 3, 0, 0]
    np.testing.assert_allclose(weight(out, "y", 2), expected, rtol=1e-6)
    assert_same(m, out, X8)


def padded_constant_net(pads2="1, 1, 1, 1"):
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[2], b1[2] = 0, 0.75                          # relu(0.75): a constant the padding surrounds with zeros
    w1[4], b1[4] = 0, -0.5                          # relu(-0.5) = 0: zero, padding cannot hurt
    return conv_relu_conv(w1, b1, w(4, 8, 3, 3, seed=1), vec(4, seed=1), pads2=pads2, k2=3)


def test_constant_channel_meeting_zero_padding_leaves_through_an_exact_border_term():
    m = padded_constant_net()
    out, rec = prune(m)
    assert weight(out, "c1").shape == (6, 3, 3, 3)
    assert weight(out, "y_noborder").shape == (4, 6, 3, 3)
    border = next(n for n in out.graph.node if n.op_type == "Conv" and n.input[0] != "r1" and n.input[0] != "x")
    term = init(out, border.input[1])
    np.testing.assert_allclose(term[:, 0], 0.75 * w(4, 8, 3, 3, seed=1)[:, 2], rtol=1e-6)
    assert attr(out, border.output[0], "pads") == [1, 1, 1, 1]
    # a fixed 6x6 input: the map of ones has a constant shape (ORT folds the whole term at load)
    ones = node_by_output(out, border.input[0])
    assert ones.op_type == "ConstantOfShape" and list(init(out, ones.input[0])) == [1, 1, 6, 6]
    assert "Shape" not in ops(out)
    assert_same(m, out, X8)


def test_border_false_keeps_constants_that_meet_padding():
    m = padded_constant_net()
    out, rec = prune(m, "prune{border=false}")
    assert weight(out, "c1").shape == (7, 3, 3, 3)
    kept_bias = weight(out, "c1", 2)
    assert 0.75 in kept_bias and -0.5 not in kept_bias
    assert "ConstantOfShape" not in ops(out)
    assert_same(m, out, X8)


@pytest.mark.parametrize("conv2", [
    "Conv<pads = [1, 2, 0, 1], strides = [2, 1]>",
    "Conv<pads = [2, 2, 2, 2], dilations = [2, 2]>",
    "Conv<auto_pad = \"SAME_UPPER\", strides = [2, 2]>",
    "Conv<auto_pad = \"SAME_LOWER\">",
])
def test_border_term_matches_strides_dilations_and_auto_pad(conv2):
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[1], b1[1] = 0, 1.5
    w1[6], b1[6] = 0, 0.25
    m = net(f"""
    g (float[N,3,H,W] x, float[8,3,3,3] w1, float[8] b1, float[4,8,3,3] w2) => (float[N,4,A,B] y) {{
      c1 = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
      r1 = Relu(c1)
      y = {conv2}(r1, w2)
    }}""", w1=w1, b1=b1, w2=w(4, 8, 3, 3, seed=1))
    out, _ = prune(m)
    assert weight(out, "c1").shape == (6, 3, 3, 3)
    assert ops(out).count("Shape") == 1              # dynamic size: the ones follow Shape(input)
    for shape in ((1, 3, 8, 8), (2, 3, 7, 9)):
        assert_same(m, out, {"x": rand(*shape, seed=sum(shape))})


def test_border_term_goes_after_the_batchnorm_so_conv_and_batchnorm_still_fuse():
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[5], b1[5] = 0, 0.6
    p = bn(4, seed=3)
    m = net("""
    g (float[1,3,8,8] x, float[8,3,3,3] w1, float[8] b1, float[4,8,3,3] w2,
       float[4] scale, float[4] shift, float[4] mean, float[4] var) => (float[1,4,8,8] y) {
      c1 = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
      r1 = Relu(c1)
      c2 = Conv<pads = [1, 1, 1, 1]>(r1, w2)
      n2 = BatchNormalization(c2, scale, shift, mean, var)
      y = Relu(n2)
    }""", w1=w1, b1=b1, w2=w(4, 8, 3, 3, seed=1), **p)
    out, _ = prune(m)
    bn_node = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    assert bn_node.input[0] == "c2"                        # still the conv's own output
    add = next(n for n in out.graph.node if n.op_type == "Add" and bn_node.output[0] in n.input)
    assert add.output[0] == "n2"
    assert_same(m, out, X8)
    fused, _ = prune(m, "prune,fuse")
    assert "BatchNormalization" not in ops(fused)
    assert_same(m, fused, X8)


def test_constant_channel_folds_exactly_into_an_unpadded_3x3_conv():
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[2], b1[2] = 0, 0.75
    m = conv_relu_conv(w1, b1, w(4, 8, 3, 3, seed=1), vec(4, seed=1), k2=3)
    out, _ = prune(m)
    assert weight(out, "y").shape == (4, 7, 3, 3)
    assert_same(m, out, X8)


def test_constant_channel_folds_into_gemm_and_matmul_bias():
    w1, b1 = w(6, 3, 3, 3), vec(6)
    w1[1], b1[1] = 0, 2.0                          # channel 1 is sigmoid(2.0): folds into the Gemm
    g1 = w(6, 5, seed=2)
    g1[:, 2] = 0                                   # Gemm column 2 is relu(0.5): folds into the MatMul
    gb = vec(5, seed=2, values={2: 0.5})
    m = net("""
    g (float[1,3,3,3] x, float[6,3,3,3] w1, float[6] b1, float[6,5] g1, float[5] gb, float[5,4] m1)
      => (float[1,4] y) {
      c1 = Conv(x, w1, b1)
      s1 = Sigmoid(c1)
      f1 = Flatten(s1)
      h = Gemm(f1, g1, gb)
      h2 = Relu(h)
      y = MatMul(h2, m1)
    }""", w1=w1, b1=b1, g1=g1, gb=gb, m1=w(5, 4, seed=3))
    out, rec = prune(m)
    assert weight(out, "c1").shape == (5, 3, 3, 3)
    assert weight(out, "h").shape == (5, 4)
    assert weight(out, "y_nobias").shape == (4, 4)
    assert node_by_output(out, "y").op_type == "Add"
    np.testing.assert_allclose(weight(out, "y"), 0.5 * w(5, 4, seed=3)[2], rtol=1e-6)
    assert_same(m, out, {"x": rand(1, 3, 3, 3)})


def test_constant_channel_folds_into_the_bias_add_after_a_matmul():
    m1 = w(6, 8, seed=1)
    m1[:, 3] = 0
    m = net("""
    g (float[2,5,6] x, float[6,8] m1, float[8] b1, float[8,4] m2, float[4] b2) => (float[2,5,4] y) {
      h = MatMul(x, m1)
      hb = Add(h, b1)
      r = Sigmoid(hb)
      k = MatMul(r, m2)
      y = Add(k, b2)
    }""", m1=m1, b1=vec(8), m2=w(8, 4, seed=2), b2=vec(4, seed=2))
    out, _ = prune(m)
    assert ops(out) == ["MatMul", "Add", "Sigmoid", "MatMul", "Add"]
    assert weight(out, "k").shape == (7, 4)
    expected = vec(4, seed=2) + w(8, 4, seed=2)[3] / (1 + np.exp(-vec(8)[3]))
    np.testing.assert_allclose(weight(out, "y"), expected, rtol=1e-6)
    assert_same(m, out, {"x": rand(2, 5, 6)})


# ---------------------------------------------------------------------------------------------
# couplings


def test_elementwise_per_channel_and_scalar_constants_are_cut_with_the_channel():
    m = net("""
    g (float[1,3,8,8] x, float[8,3,1,1] w1, float[8,1,1] k, float[1] s, float[1,8,1,1] d, float[4,8,1,1] w2)
      => (float[1,4,8,8] y) {
      c1 = Conv(x, w1)
      a = Mul(c1, k)
      b = Mul(a, s)
      e = Sub(b, d)
      y = Conv(e, w2)
    }""", w1=w(8, 3, 1, 1, zero=(4,)), k=w(8, 1, 1, seed=5), s=np.array([3.0], np.float32),
        d=w(1, 8, 1, 1, seed=6), w2=w(4, 8, 1, 1, seed=1))
    out, _ = prune(m)
    assert weight(out, "a").shape == (7, 1, 1)
    assert weight(out, "b").shape == (1,)
    assert weight(out, "e").shape == (1, 7, 1, 1)
    assert weight(out, "y").shape == (4, 7, 1, 1)     # channel 4 was -d[4]: folded into a new bias
    assert len(node_by_output(out, "y").input) == 3
    assert_same(m, out, X8)


@pytest.mark.parametrize("act", ["Relu(c1)", "Sigmoid(c1)", "HardSwish(c1)", "LeakyRelu<alpha = 0.1>(c1)",
                                 "HardSigmoid(c1)", "Tanh(c1)", "Clip(c1, lo, hi)"])
def test_activations_map_constant_channels(act):
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[5], b1[5] = 0, 1.5
    m = net(f"""
    g (float[1,3,8,8] x, float[8,3,3,3] w1, float[8] b1, float[4,8,1,1] w2) => (float[1,4,6,6] y) {{
      c1 = Conv(x, w1, b1)
      lo = Constant<value = float {{-1.0}}>()
      hi = Constant<value = float {{0.5}}>()
      a1 = {act}
      y = Conv(a1, w2)
    }}""", w1=w1, b1=b1, w2=w(4, 8, 1, 1, seed=1))
    out, _ = prune(m)
    assert weight(out, "y").shape == (4, 7, 1, 1)
    assert_same(m, out, X8)


def test_pooling_keeps_channels_and_constants_except_padded_average():
    w1, b1 = w(8, 3, 3, 3), vec(8)
    w1[1], b1[1] = 0, 0.5                     # constant: fine through max pool, broken by avg padding
    w1[6], b1[6] = 0, 0.0                     # zero: fine through everything
    text = """
    g (float[1,3,10,10] x, float[8,3,3,3] w1, float[8] b1, float[4,8,1,1] w2) => (float[1,4,1,1] y) {
      c1 = Conv(x, w1, b1)
      p1 = MaxPool<kernel_shape = [2, 2], pads = [1, 1, 1, 1]>(c1)
      p2 = POOL2(p1)
      p3 = GlobalAveragePool(p2)
      y = Conv(p3, w2)
    }"""
    weights = dict(w1=w1, b1=b1, w2=w(4, 8, 1, 1, seed=1))
    feeds = {"x": rand(1, 3, 10, 10)}
    m = net(text.replace("POOL2", "AveragePool<kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1>"), **weights)
    out, _ = prune(m)
    assert weight(out, "c1").shape == (7, 3, 3, 3)
    assert_same(m, out, feeds)
    m = net(text.replace("POOL2", "AveragePool<kernel_shape = [3, 3], pads = [1, 1, 1, 1]>"), **weights)
    out, _ = prune(m)
    assert weight(out, "c1").shape == (6, 3, 3, 3)
    assert_same(m, out, feeds)


def test_resize_with_scales_and_with_sizes_rewritten():
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[4,8,1,1] w2, float[4] sc, int64[4] sz) => (float[1,4,16,16] y) {
      c1 = Conv(x, w1)
      u1 = Resize(c1, , sc)
      u2 = Resize(u1, , , sz)
      y = Conv(u2, w2)
    }""", w1=w(8, 3, 1, 1, zero=(0, 7)), w2=w(4, 8, 1, 1, seed=1),
        sc=np.array([1, 1, 2, 2], np.float32), sz=np.array([1, 8, 16, 16], np.int64))
    out, _ = prune(m)
    assert weight(out, "u2", 3).tolist() == [1, 6, 16, 16]
    assert weight(out, "y").shape == (4, 6, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_resize_that_scales_channels_blocks():
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[4,16,1,1] w2, float[4] sc) => (float[1,4,8,8] y) {
      c1 = Conv(x, w1)
      u1 = Resize(c1, , sc)
      y = Conv(u1, w2)
    }""", w1=w(8, 3, 1, 1, zero=(0,)), w2=w(4, 16, 1, 1, seed=1), sc=np.array([1, 2, 2, 2], np.float32))
    out, rec = prune(m)
    assert rec.changed is False and rec.stats["blocked_by"] == {"Resize": 1}


def test_pad_on_spatial_axes_passes_and_breaks_only_nonmatching_constants():
    w1, b1 = w(8, 3, 1, 1), vec(8)
    w1[2], b1[2] = 0, 1.0           # constant 1 padded with 0: no longer constant
    w1[3], b1[3] = 0, 0.0           # zero padded with 0: still zero
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[8] b1, int64[8] pads, float[4,8,1,1] w2) => (float[1,4,6,6] y) {
      c1 = Conv(x, w1, b1)
      p = Pad(c1, pads)
      y = Conv(p, w2)
    }""", w1=w1, b1=b1, pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), w2=w(4, 8, 1, 1, seed=1))
    out, _ = prune(m)
    assert weight(out, "c1").shape == (7, 3, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_pad_on_the_channel_axis_blocks():
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, int64[8] pads, float[4,10,1,1] w2) => (float[1,4,4,4] y) {
      c1 = Conv(x, w1)
      p = Pad(c1, pads)
      y = Conv(p, w2)
    }""", w1=w(8, 3, 1, 1, zero=(1,)), pads=np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64), w2=w(4, 10, 1, 1))
    out, rec = prune(m)
    assert rec.changed is False


def test_concat_remaps_offsets():
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] wa, float[6,3,1,1] wb, float[4,14,1,1] w2) => (float[1,4,4,4] y) {
      a = Conv(x, wa)
      b = Conv(x, wb)
      c = Concat<axis = 1>(a, b)
      y = Conv(c, w2)
    }""", wa=w(8, 3, 1, 1, zero=(2,)), wb=w(6, 3, 1, 1, seed=1, zero=(0, 5)), w2=w(4, 14, 1, 1, seed=2))
    out, _ = prune(m)
    assert weight(out, "a").shape == (7, 3, 1, 1) and weight(out, "b").shape == (4, 3, 1, 1)
    np.testing.assert_array_equal(weight(out, "y"), np.delete(w(4, 14, 1, 1, seed=2), [2, 8, 13], axis=1))
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_concat_with_a_graph_input_keeps_the_input_part():
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] wa, float[4,11,1,1] w2) => (float[1,4,4,4] y) {
      a = Conv(x, wa)
      c = Concat<axis = 1>(x, a)
      y = Conv(c, w2)
    }""", wa=w(8, 3, 1, 1, zero=(0,)), w2=w(4, 11, 1, 1, seed=2))
    out, _ = prune(m)
    assert weight(out, "y").shape == (4, 10, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_split_sizes_and_slice_bounds_are_rewritten():
    # w1 rows: s1 = 0..3 (row 1 zero), s2 = 4..11 (rows 6, 9 zero); sl = s2[3:5] = rows 7, 8
    m = net("""
    g (float[1,3,4,4] x, float[12,3,1,1] w1, int64[2] parts, int64[1] st, int64[1] en, int64[1] ax,
       float[4,4,1,1] wa, float[4,8,1,1] wb, float[4,2,1,1] wc) => (float[1,4,4,4] y) {
      c1 = Conv(x, w1)
      s1, s2 = Split<axis = 1>(c1, parts)
      sl = Slice(s2, st, en, ax)
      ya = Conv(s1, wa)
      yb = Conv(s2, wb)
      yc = Conv(sl, wc)
      t = Add(ya, yb)
      y = Add(t, yc)
    }""", w1=w(12, 3, 1, 1, zero=(1, 6, 9)), parts=np.array([4, 8], np.int64), st=np.array([3], np.int64),
        en=np.array([5], np.int64), ax=np.array([1], np.int64), wa=w(4, 4, 1, 1, seed=1), wb=w(4, 8, 1, 1, seed=2),
        wc=w(4, 2, 1, 1, seed=3))
    out, _ = prune(m)
    assert weight(out, "s1", 1).tolist() == [3, 6]
    assert weight(out, "sl", 1).tolist() == [2] and weight(out, "sl", 2).tolist() == [4]
    assert weight(out, "yb").shape == (4, 6, 1, 1) and weight(out, "yc").shape == (4, 2, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_residual_add_removes_a_channel_only_when_both_branches_agree():
    p1, p2 = bn(8, zero=(1, 4)), bn(8, seed=1, zero=(1,))
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] wa, float[8,3,3,3] wb, float[8] scale, float[8] shift, float[8] mean,
       float[8] var, float[8] s2, float[8] h2, float[8] m2, float[8] v2, float[4,8,1,1] w2) => (float[1,4,4,4] y) {
      a = Conv(x, wa)
      na = BatchNormalization(a, scale, shift, mean, var)
      b = Conv<pads = [1, 1, 1, 1]>(x, wb)
      nb = BatchNormalization(b, s2, h2, m2, v2)
      r = Add(na, nb)
      rr = Relu(r)
      y = Conv(rr, w2)
    }""", wa=w(8, 3, 1, 1), wb=w(8, 3, 3, 3, seed=1), w2=w(4, 8, 1, 1, seed=2),
        s2=p2["scale"], h2=p2["shift"], m2=p2["mean"], v2=p2["var"], **p1)
    out, _ = prune(m)
    assert weight(out, "a").shape == (7, 3, 1, 1) and weight(out, "b").shape == (7, 3, 3, 3)
    assert weight(out, "y").shape == (4, 7, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_squeeze_excitation_mul_ties_the_gate_to_the_gated_channels():
    p = bn(8, zero=(3,))
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[8] scale, float[8] shift, float[8] mean, float[8] var,
       float[2,8,1,1] se1, float[8,2,1,1] se2, float[4,8,1,1] w2) => (float[1,4,4,4] y) {
      c = Conv(x, w1)
      n = BatchNormalization(c, scale, shift, mean, var)
      p = GlobalAveragePool(n)
      e1 = Conv(p, se1)
      e2 = Relu(e1)
      e3 = Conv(e2, se2)
      gate = Sigmoid(e3)
      z = Mul(n, gate)
      y = Conv(z, w2)
    }""", w1=w(8, 3, 1, 1), se1=w(2, 8, 1, 1, seed=1), se2=w(8, 2, 1, 1, seed=2), w2=w(4, 8, 1, 1, seed=3), **p)
    out, _ = prune(m)
    assert weight(out, "c").shape == (7, 3, 1, 1)
    assert weight(out, "e3").shape == (7, 2, 1, 1)      # the gate's row for channel 3 goes too
    assert weight(out, "e1").shape == (2, 7, 1, 1)      # and the squeeze conv's column
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_depthwise_conv_shrinks_its_group_count():
    m = net("""
    g (float[1,3,6,6] x, float[8,3,1,1] w1, float[8,1,3,3] dw, float[8] db, float[4,8,1,1] w2) => (float[1,4,6,6] y) {
      c1 = Conv(x, w1)
      d = Conv<group = 8, pads = [1, 1, 1, 1]>(c1, dw, db)
      r = Relu(d)
      y = Conv(r, w2)
    }""", w1=w(8, 3, 1, 1), dw=w(8, 1, 3, 3, seed=1, zero=(2, 5)), db=vec(8, zero=(2, 5)), w2=w(4, 8, 1, 1, seed=2))
    out, _ = prune(m)
    assert attr(out, "d", "group") == 6
    assert weight(out, "d").shape == (6, 1, 3, 3) and weight(out, "c1").shape == (6, 3, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 6, 6)})


def test_grouped_conv_drops_whole_groups_only():
    dw = w(8, 2, 1, 1, seed=1)
    db = vec(8)
    dw[2:4], db[2:4] = 0, 0             # group 1 (out 2..3) fully zero -> group goes with inputs 2..3
    dw[6], db[6] = 0, 0                 # half of group 3: must stay
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[8,2,1,1] dw, float[8] db, float[4,8,1,1] w2) => (float[1,4,4,4] y) {
      c1 = Conv(x, w1)
      d = Conv<group = 4>(c1, dw, db)
      y = Conv(d, w2)
    }""", w1=w(8, 3, 1, 1), dw=dw, db=db, w2=w(4, 8, 1, 1, seed=2))
    out, _ = prune(m)
    assert attr(out, "d", "group") == 3
    assert weight(out, "d").shape == (6, 2, 1, 1) and weight(out, "c1").shape == (6, 3, 1, 1)
    assert weight(out, "y").shape == (4, 6, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_conv_transpose_drops_zero_input_rows_but_not_constant_channels():
    w1, b1 = w(8, 3, 1, 1, zero=(1,)), vec(8, zero=(1,))
    w1[4], b1[4] = 0, 0.3
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[8] b1, float[8,5,3,3] wt, float[5] bt, float[4,5,1,1] w2)
      => (float[1,4,9,9] y) {
      c1 = Conv(x, w1, b1)
      t = ConvTranspose<strides = [2, 2]>(c1, wt, bt)
      y = Conv(t, w2)
    }""", w1=w1, b1=b1, wt=w(8, 5, 3, 3, seed=1, zero=()), bt=vec(5, seed=1), w2=w(4, 5, 1, 1, seed=2))
    out, _ = prune(m)
    assert weight(out, "c1").shape == (7, 3, 1, 1)
    assert weight(out, "t").shape == (7, 5, 3, 3)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_conv_transpose_output_channels_are_removable():
    wt = w(4, 6, 2, 2, seed=1)
    wt[:, 2] = 0
    m = net("""
    g (float[1,3,4,4] x, float[4,3,1,1] w1, float[4,6,2,2] wt, float[3,6,1,1] w2) => (float[1,3,8,8] y) {
      c1 = Conv(x, w1)
      t = ConvTranspose<strides = [2, 2]>(c1, wt)
      y = Conv(t, w2)
    }""", w1=w(4, 3, 1, 1), wt=wt, w2=w(3, 6, 1, 1, seed=2))
    out, _ = prune(m)
    assert weight(out, "t").shape == (4, 5, 2, 2) and weight(out, "y").shape == (3, 5, 1, 1)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_gemm_and_matmul_rows_and_columns():
    g1 = w(6, 8, seed=1)
    g1[:, [0, 5]] = 0
    m1 = w(8, 7, seed=2)
    m1[:, 3] = 0
    m = net("""
    g (float[2,6] x, float[6,8] g1, float[8] gb, float[8,7] m1, float[7,3] m2) => (float[2,3] y) {
      h = Gemm(x, g1, gb)
      r = Relu(h)
      k = MatMul(r, m1)
      k2 = Relu(k)
      y = MatMul(k2, m2)
    }""", g1=g1, gb=vec(8, zero=(0, 5)), m1=m1, m2=w(7, 3, seed=3))
    out, rec = prune(m)
    assert weight(out, "h").shape == (6, 6) and weight(out, "h", 2).shape == (6,)
    assert weight(out, "k").shape == (6, 6) and weight(out, "y").shape == (6, 3)
    assert_same(m, out, {"x": rand(2, 6)})


def test_gemm_with_transposed_weights():
    g1 = w(8, 6, seed=1)
    g1[[2, 3]] = 0
    m = net("""
    g (float[2,6] x, float[8,6] g1, float[4,8] g2) => (float[2,4] y) {
      h = Gemm<transB = 1>(x, g1)
      y = Gemm<transB = 1>(h, g2)
    }""", g1=g1, g2=w(4, 8, seed=2))
    out, _ = prune(m)
    assert weight(out, "h").shape == (6, 6) and weight(out, "y").shape == (4, 6)
    assert_same(m, out, {"x": rand(2, 6)})


def test_flatten_into_gemm_removes_channel_by_spatial_blocks():
    m = net("""
    g (float[1,3,4,4] x, float[4,3,3,3] w1, float[16,5] g1) => (float[1,5] y) {
      c1 = Conv(x, w1)
      f = Flatten(c1)
      y = Gemm(f, g1)
    }""", w1=w(4, 3, 3, 3, zero=(1,)), g1=w(16, 5, seed=1))
    out, _ = prune(m)
    np.testing.assert_array_equal(weight(out, "y"), np.delete(w(16, 5, seed=1), [4, 5, 6, 7], axis=0))
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


def test_reshape_flatten_and_transpose_to_channels_last():
    m = net("""
    g (float[1,3,4,4] x, float[4,3,3,3] w1, int64[2] shp, float[16,5] g1, float[4,3] m1) => (float[1,5] y, float[1,2,2,3] z) {
      c1 = Conv(x, w1)
      f = Reshape(c1, shp)
      y = MatMul(f, g1)
      t = Transpose<perm = [0, 2, 3, 1]>(c1)
      z = MatMul(t, m1)
    }""", w1=w(4, 3, 3, 3, zero=(2,)), shp=np.array([1, 16], np.int64), g1=w(16, 5, seed=1), m1=w(4, 3, seed=2))
    out, _ = prune(m)
    assert weight(out, "f", 1).tolist() == [1, 12]
    assert weight(out, "y").shape == (12, 5) and weight(out, "z").shape == (3, 3)
    assert_same(m, out, {"x": rand(1, 3, 4, 4)})


# ---------------------------------------------------------------------------------------------
# what must stay


def test_channels_reaching_graph_outputs_or_unknown_ops_stay():
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] w1, float[8,3,1,1] w2, float[4,8,1,1] w3) => (float[1,8,4,4] a, int64[4] s, float[1,4,4,4] y) {
      a = Conv(x, w1)
      b = Conv(x, w2)
      s = Shape(b)
      e = Relu(b)
      y = Conv(e, w3)
    }""", w1=w(8, 3, 1, 1, zero=(0,)), w2=w(8, 3, 1, 1, zero=(0,)), w3=w(4, 8, 1, 1))
    out, rec = prune(m)
    assert rec.changed is False and rec.stats["blocked_by"] == {"Shape": 1}


def test_subgraph_bodies_are_pruned_on_their_own_and_outer_reads_block():
    m = net("""
    g (bool cond, float[1,3,4,4] x, float[8,3,1,1] w1, float[4,8,1,1] w2, float[8,3,1,1] w3, float[4,8,1,1] w4)
      => (float[1,4,4,4] y) {
      outer = Conv(x, w1)
      y = If(cond) <
        then_branch = t () => (float[1,4,4,4] ty) {
          c = Conv(x, w3)
          r = Relu(c)
          ty = Conv(r, w4)
        },
        else_branch = e () => (float[1,4,4,4] ey) {
          ey = Conv(outer, w2)
        }>
    }""", w1=w(8, 3, 1, 1, zero=(2,)), w2=w(4, 8, 1, 1, seed=1), w3=w(8, 3, 1, 1, seed=2, zero=(0, 1)),
        w4=w(4, 8, 1, 1, seed=3))
    out, rec = prune(m)
    assert rec.stats["groups_removed"] == 2
    then = next(a.g for a in out.graph.node[-1].attribute if a.name == "then_branch")
    inits = {i.name: i.dims for i in then.initializer} | {i.name: i.dims for i in out.graph.initializer}
    assert list(inits[then.node[0].input[1]]) == [6, 3, 1, 1]
    assert list(inits[out.graph.node[0].input[1]]) == [8, 3, 1, 1]
    for c in (True, False):
        assert_same(m, out, {"cond": np.array(c), "x": rand(1, 3, 4, 4)})


def test_recorded_intermediate_shapes_are_updated():
    m = conv_relu_conv(w(8, 3, 3, 3, zero=(0, 1, 2)), vec(8, zero=(0, 1, 2)), w(4, 8, 1, 1, seed=1), vec(4, seed=1))
    m = onnx.shape_inference.infer_shapes(m)
    assert {v.name for v in m.graph.value_info} >= {"c1", "r1"}
    out, _ = prune(m)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert dims.get("c1", [1, 5, 6, 6])[1] == 5 and dims.get("r1", [1, 5, 6, 6])[1] == 5
    assert_same(m, out, X8)


def test_weights_memory_mapped_from_external_data(tmp_path):
    m = conv_relu_conv(w(64, 3, 3, 3, zero=range(0, 64, 2)), vec(64, zero=range(0, 64, 2)),
                       w(4, 64, 1, 1, seed=1), vec(4, seed=1), c=64)
    path = tmp_path / "m.onnx"
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(m)                              # onnx.save rewrites the proto it is given
    onnx.save(on_disk, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    source = ir.to_graph(ir.load(path)).nodes[0].inputs[1].values
    assert not source.flags.writeable                 # the premise: a write in place would raise
    result = onnxopt.run_pipeline(path, "prune", verify_each=True)
    result.save(tmp_path / "out.onnx")
    out = onnx.load(tmp_path / "out.onnx")
    assert weight(out, "c1").shape == (32, 3, 3, 3)
    assert_same(m, out, X8)


def test_graph_with_a_single_live_channel_keeps_it():
    m = conv_relu_conv(w(4, 3, 3, 3, zero=(0, 1, 2, 3)), vec(4, zero=(0, 1, 2, 3)),
                       w(4, 4, 1, 1, seed=1), vec(4, seed=1), c=4)
    out, rec = prune(m)
    assert weight(out, "c1").shape == (1, 3, 3, 3)
    assert_same(m, out, X8)


# ---------------------------------------------------------------------------------------------
# lossy


def _lossy_net():
    p = bn(16, seed=4)
    p["scale"][[3, 9]] = 0.01
    return net("""
    g (float[1,3,8,8] x, float[16,3,3,3] w1, float[16] scale, float[16] shift, float[16] mean, float[16] var,
       float[8,16,1,1] w2) => (float[1,8,6,6] y) {
      c1 = Conv(x, w1)
      n1 = BatchNormalization(c1, scale, shift, mean, var)
      r1 = Relu(n1)
      y = Conv(r1, w2)
    }""", w1=w(16, 3, 3, 3, seed=3), w2=w(8, 16, 1, 1, seed=5), **p)


def test_ratio_makes_the_pass_lossy_and_removes_that_share_per_layer():
    assert Prune(Prune.Options(ratio=0.25)).effective_numerics() is Numerics.LOSSY
    assert Prune().effective_numerics() is Numerics.EXACT
    m = _lossy_net()
    for criterion in ("l1", "l2", "bn-scale"):
        out, rec = prune(m, f"prune{{ratio=0.25 criterion={criterion} multiple=1}}")
        assert weight(out, "c1").shape == (12, 3, 3, 3), criterion
        assert rec.stats["groups_removed_lossy"] == 4
    out, _ = prune(m, "prune{ratio=0.125 criterion=bn-scale multiple=1}")
    kept = weight(out, "n1", 1)
    assert 0.01 not in kept and kept.size == 14


def test_l1_ranking_removes_the_smallest_rows():
    w1 = w(16, 3, 3, 3, seed=3)
    w1[[5, 11]] *= 0.01
    m = net("""
    g (float[1,3,8,8] x, float[16,3,3,3] w1, float[8,16,1,1] w2) => (float[1,8,6,6] y) {
      c1 = Conv(x, w1)
      r1 = Relu(c1)
      y = Conv(r1, w2)
    }""", w1=w1, w2=w(8, 16, 1, 1, seed=5))
    out, _ = prune(m, "prune{ratio=0.125 multiple=1}")
    np.testing.assert_array_equal(weight(out, "c1"), np.delete(w1, [5, 11], axis=0))


def test_kept_channels_round_to_the_requested_multiple():
    m = _lossy_net()
    for ratio, kept in ((0.3, 12), (0.2, 12), (0.1, 16), (0.6, 8)):
        out, _ = prune(m, f"prune{{ratio={ratio} multiple=4}}")
        assert weight(out, "c1").shape[0] == kept, ratio
    out, rec = prune(m, "prune{ratio=0.25}")               # default 16: a 16-channel layer stays whole
    assert rec.changed is False


def test_global_allocation_takes_more_from_the_layer_with_weak_channels():
    wa, wb = w(8, 3, 1, 1, seed=1), w(8, 3, 1, 1, seed=2)
    wa[:4] *= 0.01                                   # half of layer a is weak, layer b is uniform
    m = net("""
    g (float[1,3,4,4] x, float[8,3,1,1] wa, float[8,3,1,1] wb, float[4,16,1,1] w2) => (float[1,4,4,4] y) {
      a = Conv(x, wa)
      b = Conv(x, wb)
      c = Concat<axis = 1>(a, b)
      r = Relu(c)
      y = Conv(r, w2)
    }""", wa=wa, wb=wb, w2=w(4, 16, 1, 1, seed=3))
    out, _ = prune(m, "prune{ratio=0.25 multiple=1}")
    assert weight(out, "a").shape[0] == 4 and weight(out, "b").shape[0] == 8
    out, _ = prune(m, "prune{ratio=0.25 allocation=layer multiple=1}")
    assert weight(out, "a").shape[0] == 6 and weight(out, "b").shape[0] == 6


def test_activation_criterion_needs_calibration_data():
    with pytest.raises(UsageError, match="calib"):
        onnxopt.optimize(_lossy_net(), passes="prune{ratio=0.25 criterion=activation}")
    with pytest.raises(UsageError, match="calib"):
        onnxopt.optimize(_lossy_net(), passes="prune{ratio=0.25 target=0.9}")


def test_activation_criterion_with_calibration_reports_the_error(tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=rand(8, 3, 8, 8, seed=7))
    m = _lossy_net()
    out, rec = prune(m, "prune{ratio=0.25 criterion=activation multiple=1}", calib=data)
    assert weight(out, "c1").shape == (12, 3, 3, 3)
    assert 0.0 < rec.stats["output_cosine"] <= 1.0 and rec.stats["output_max_rel"] > 0
    plain, plain_rec = prune(m, "prune{ratio=0.25 criterion=activation compensate=false multiple=1}", calib=data)
    assert rec.stats["output_cosine"] >= plain_rec.stats["output_cosine"]


def test_target_stops_before_the_cosine_falls_under_it(tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=rand(8, 3, 8, 8, seed=7))
    m = _lossy_net()
    _, loose = prune(m, "prune{ratio=0.75 target=-1.0 multiple=1}", calib=data)
    _, strict = prune(m, "prune{ratio=0.75 target=0.999999 multiple=1}", calib=data)
    assert loose.stats["groups_removed"] == 12
    assert strict.stats.get("groups_removed", 0) < loose.stats["groups_removed"]
    if strict.changed:
        assert strict.stats["output_cosine"] >= 0.999999


def test_options_are_validated_and_print_canonically():
    with pytest.raises(Exception, match="ratio"):
        parse("prune{ratio=1.5}")
    assert str(parse("prune{ratio=0.5}")) == \
        "prune{ratio=0.5 criterion=l1 allocation=global multiple=16 target=none compensate=true border=true samples=16 steps=8}"


def test_lossy_mode_still_removes_proven_constants_at_padded_convs_exactly(tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=rand(8, 3, 8, 8, seed=7))
    m = padded_constant_net()
    exact, rec = prune(m, "prune{ratio=0.25 criterion=activation multiple=1}", calib=data)
    assert weight(exact, "c1").shape == (6, 3, 3, 3)      # the share is met by the exact groups alone
    assert rec.stats["groups_removed_lossy"] == 0 and rec.stats["output_max_rel"] < 1e-5
    out, rec = prune(m, "prune{ratio=0.375 criterion=activation multiple=1}", calib=data)
    assert weight(out, "c1").shape == (5, 3, 3, 3)        # zero 4 and constant 2 exactly, one ranked
    assert rec.stats["groups_removed_lossy"] == 1 and "ConstantOfShape" in ops(out)
    border = next(n for n in out.graph.node if n.op_type == "Conv" and n.input[0] not in ("x", "r1"))
    np.testing.assert_allclose(init(out, border.input[1])[:, 0], 0.75 * w(4, 8, 3, 3, seed=1)[:, 2], rtol=1e-6)
    kept, _ = prune(m, "prune{ratio=0.375 criterion=activation multiple=1 border=false}", calib=data)
    assert "ConstantOfShape" not in ops(kept)
