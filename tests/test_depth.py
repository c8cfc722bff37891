"""Tests for `depth`: block detection (residual, projection, pre-/post-LN transformer layers),
removal (checked against the same model built without the block), sensitivity-driven greedy
selection on calibration data, the option contract and `Depth.list_blocks`."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from helpers import assert_same, rand
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt import ir
from onnxopt.errors import UsageError
from onnxopt.passes.depth import Depth
from onnxopt.passes.depth.blocks import find_blocks
from onnxopt.passes.depth.listing import prepared_graph
from onnxopt.passes.depth.selection import greedy
from onnxopt.passes.depth.sensitivity import Evaluator, Score


# ---------------------------------------------------------------------------------------------
# model builders (onnx.helper, numpy weights): the same function builds a model with and
# without given blocks, so removal can be checked against the model that never had them


class Builder:
    def __init__(self, seed: int = 0):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, values, base="w") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(values), n))
        return n

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, gamma: float = 1.0, relu: bool = True):
        w = self.rng.standard_normal((cout, cin, k, k)).astype(np.float32) * math.sqrt(2.0 / (cin * k * k))
        y = self.op("Conv", [x, self.const(w)], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        scale = (gamma * (0.5 + self.rng.random(cout))).astype(np.float32)
        bias = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        mean = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        var = (0.5 + self.rng.random(cout)).astype(np.float32)
        y = self.op("BatchNormalization", [y, self.const(scale), self.const(bias), self.const(mean), self.const(var)])
        return self.op("Relu", [y]) if relu else y

    def model(self, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def bottleneck(b: Builder, x: str, cin: int, cout: int, stride: int, projection: bool, gamma: float) -> str:
    mid = cout // 2
    y = b.conv_bn(x, cin, mid, 1)
    y = b.conv_bn(y, mid, mid, 3, stride)
    y = b.conv_bn(y, mid, cout, 1, gamma=gamma, relu=False)
    short = b.conv_bn(x, cin, cout, 1, stride, relu=False) if projection else x
    return b.op("Relu", [b.op("Add", [y, short])])


# (cin, cout, stride, projection, gamma); the stride-1 projection block keeps the shape, so only
# the missing identity shortcut can keep it out of the candidates
RESNET = [(8, 8, 1, True, 1.0), (8, 8, 1, False, 1.0), (8, 8, 1, False, 0.02),
          (8, 16, 2, True, 1.0), (16, 16, 1, False, 0.3)]
IDENTITY_BLOCKS = [1, 2, 4]   # positions in RESNET of the identity-shortcut blocks


def resnet(skip: frozenset[int] = frozenset(), seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.conv_bn("image", 3, 8, 3)
    for k, (cin, cout, stride, proj, gamma) in enumerate(RESNET):
        mark = len(b.nodes)
        out = bottleneck(b, x, cin, cout, stride, proj, gamma)
        if k in skip:                     # same weights drawn, block not emitted
            del b.nodes[mark:]
        else:
            x = out
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.rng.standard_normal((16, 10)).astype(np.float32) * 0.3
    b.nodes.append(helper.make_node("Gemm", [pooled, b.const(w), b.const(np.zeros(10, np.float32))], ["logits"]))
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])


D, FF = 8, 16


def layer_norm(b: Builder, x: str, decomposed: bool) -> str:
    scale = (1 + 0.1 * b.rng.standard_normal(D)).astype(np.float32)
    bias = (0.1 * b.rng.standard_normal(D)).astype(np.float32)
    if not decomposed:
        return b.op("LayerNormalization", [x, b.const(scale), b.const(bias)], axis=-1, epsilon=1e-5)
    mean = b.op("ReduceMean", [x], axes=[-1])
    centered = b.op("Sub", [x, mean])
    var = b.op("ReduceMean", [b.op("Pow", [centered, b.const(np.array(2.0, np.float32))])], axes=[-1])
    std = b.op("Sqrt", [b.op("Add", [var, b.const(np.array(1e-5, np.float32))])])
    return b.op("Add", [b.op("Mul", [b.op("Div", [centered, std]), b.const(scale)]), b.const(bias)])


def linear(b: Builder, x: str, cin: int, cout: int, gain: float = 1.0) -> str:
    w = (gain * b.rng.standard_normal((cin, cout)) / math.sqrt(cin)).astype(np.float32)
    bias = (0.1 * b.rng.standard_normal(cout)).astype(np.float32)
    return b.op("Add", [b.op("MatMul", [x, b.const(w)]), b.const(bias)])


def attention(b: Builder, x: str, shape: str, gain: float) -> str:
    q, k, v = (linear(b, x, D, D) for _ in range(3))
    scores = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])]),
                          b.const(np.array(1 / math.sqrt(D), np.float32))])
    ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    ctx = b.op("Reshape", [ctx, shape])      # a shape taken from outside the layer, as BERT does
    return linear(b, ctx, D, D, gain)


def mlp(b: Builder, x: str, gain: float) -> str:
    return linear(b, b.op("Relu", [linear(b, x, D, FF)]), FF, D, gain)


def transformer(layers: int = 3, *, pre_ln: bool, decomposed: bool = False, gains=None,
                skip: frozenset[int] = frozenset(), seed: int = 0, hidden_outputs: bool = False) -> onnx.ModelProto:
    gains = gains or [1.0] * layers
    b = Builder(seed)
    x = "x"
    hidden = []
    shape = b.op("Shape", ["x"])
    opset = 13 if decomposed else 17
    for k in range(layers):
        mark = len(b.nodes)
        if pre_ln:
            h = b.op("Add", [x, attention(b, layer_norm(b, x, decomposed), shape, gains[k])])
            out = b.op("Add", [h, mlp(b, layer_norm(b, h, decomposed), gains[k])])
        else:
            h = layer_norm(b, b.op("Add", [x, attention(b, x, shape, gains[k])]), decomposed)
            out = layer_norm(b, b.op("Add", [h, mlp(b, h, gains[k])]), decomposed)
        if k in skip:
            del b.nodes[mark:]
        else:
            x = out
            hidden.append(out)
    if pre_ln:
        x = layer_norm(b, x, decomposed)
    b.nodes.append(helper.make_node("Identity", [x], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", D])]
    if hidden_outputs:                     # every layer's output is also a model output
        outputs += [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["N", "T", D]) for h in hidden]
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", D])], outputs, opset=opset)


def blocks_of(m: onnx.ModelProto):
    graph, _ = prepared_graph(ir.from_proto(m))
    return graph, find_blocks(graph)


def write_calib(path, name: str, array: np.ndarray) -> str:
    np.savez(path, **{name: array})
    return str(path)


def images(n: int, seed: int) -> np.ndarray:
    return rand(n, 3, 16, 16, seed=seed)


def depth(m, pipeline: str, calib=None):
    return onnxopt.run_pipeline(m, pipeline, calib, verify_each=True, change_guard=True)


def n_ops(m: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in m.graph.node)


# ---------------------------------------------------------------------------------------------
# detection


def test_resnet_identity_blocks_found_projection_blocks_never():
    graph, blocks = blocks_of(resnet())
    assert [b.kind for b in blocks] == ["residual"] * len(IDENTITY_BLOCKS)
    tensors = graph.tensors()
    for b in blocks:
        # identity shortcut: the Add reads the entry tensor itself; exit is the Relu after it
        exit_node = tensors[b.exit].inputs[0]
        assert exit_node.op == "Relu"
        add = exit_node.inputs[0].inputs[0]
        assert add.op == "Add" and any(t.name == b.entry for t in add.inputs)
        ops = sorted(graph.nodes[i].op for i in b.nodes)
        assert ops.count("Conv") == 3 and ops.count("BatchNormalization") == 3 and ops.count("Add") == 1
    # no region reaches into a projection block (its Add joins two BatchNorm branches)
    projection_adds = [i for i, n in enumerate(graph.nodes) if n.op == "Add"
                       and all(t.inputs and t.inputs[0].op == "BatchNormalization" for t in n.inputs)]
    assert len(projection_adds) == 2
    assert not set(projection_adds) & {i for b in blocks for i in b.nodes}


def test_resnet_removing_named_block_equals_the_model_built_without_it():
    m = resnet()
    out = depth(m, "depth{blocks=1}").model
    assert n_ops(out, "Conv") == n_ops(m, "Conv") - 3
    assert_same(resnet(skip=frozenset({IDENTITY_BLOCKS[1]})), out, {"image": images(2, 1)}, tol=1e-5)
    both = depth(m, "depth{blocks=0,2}").model
    assert n_ops(both, "Conv") == n_ops(m, "Conv") - 6
    assert_same(resnet(skip=frozenset({IDENTITY_BLOCKS[0], IDENTITY_BLOCKS[2]})), both, {"image": images(2, 1)},
                tol=1e-5)


@pytest.mark.parametrize("decomposed", [False, True])
def test_post_ln_layers_end_at_their_layernorm_and_keep_the_output_name(decomposed):
    m = transformer(3, pre_ln=False, decomposed=decomposed)
    graph, blocks = blocks_of(m)
    assert [b.kind for b in blocks] == ["transformer_layer"] * 3
    assert blocks[0].entry == "x" and all(b.parts == 2 for b in blocks)
    assert [blocks[k].exit == blocks[k + 1].entry for k in range(2)] == [True, True]
    feeds = {"x": rand(2, 5, D, seed=3)}
    for k in range(3):
        out = depth(m, f"depth{{blocks={k}}}").model
        assert [o.name for o in out.graph.output] == ["y"]
        assert_same(transformer(3, pre_ln=False, decomposed=decomposed, skip=frozenset({k})), out, feeds, tol=1e-5)


def test_pre_ln_layers_end_at_the_residual_add_and_never_take_the_final_norm():
    m = transformer(3, pre_ln=True)
    graph, blocks = blocks_of(m)
    assert [b.kind for b in blocks] == ["transformer_layer"] * 3
    last_exit = graph.tensors()[blocks[-1].exit].inputs[0]
    assert last_exit.op == "Add"
    feeds = {"x": rand(2, 5, D, seed=3)}
    out = depth(m, "depth{blocks=2}").model
    assert n_ops(out, "LayerNormalization") == n_ops(m, "LayerNormalization") - 2
    assert_same(transformer(3, pre_ln=True, skip=frozenset({2})), out, feeds, tol=1e-5)
    everything = depth(m, "depth{blocks=0,1,2}").model
    assert n_ops(everything, "MatMul") == 0 and n_ops(everything, "LayerNormalization") == 1


def test_layers_whose_outputs_are_also_model_outputs_are_found_and_outputs_kept():
    m = transformer(3, pre_ln=False, hidden_outputs=True)
    names = [o.name for o in m.graph.output]
    _, blocks = blocks_of(m)
    assert [b.kind for b in blocks] == ["transformer_layer"] * 3
    assert [b.exit for b in blocks] == names[1:]
    feeds = {"x": rand(2, 5, D, seed=3)}
    for k in (0, 1):
        out = depth(m, f"depth{{blocks={k}}}").model
        assert [o.name for o in out.graph.output] == names
        got = onnxopt.validate.run(onnxopt.validate.session(out), feeds)
        ref = onnxopt.validate.run(onnxopt.validate.session(transformer(3, pre_ln=False, skip=frozenset({k}))), feeds)
        np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-5, atol=1e-5)
        entry = feeds["x"] if k == 0 else got[names[k]]
        np.testing.assert_array_equal(got[names[k + 1]], entry)     # the removed layer passes its input on


def _residual_with_leak(leak: str) -> onnx.ModelProto:
    """y = x + f(x) where an internal tensor of f is also used outside the block."""
    b = Builder(1)
    h = b.op("Relu", [linear(b, "x", D, D)])
    f = linear(b, h, D, D)
    y = b.op("Add", ["x", f])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])]
    if leak == "output":
        b.nodes.append(helper.make_node("Identity", [h], ["h_out"]))
        outputs.append(helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", D]))
    elif leak == "shape":
        later = b.op("Reshape", [b.op("Relu", [y]), b.op("Shape", [h])])
        y = later
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])], outputs)


@pytest.mark.parametrize("leak", ["output", "shape"])
def test_a_block_whose_inside_is_used_elsewhere_is_not_removable(leak):
    _, blocks = blocks_of(_residual_with_leak(leak))
    assert blocks == []


def test_a_clean_residual_on_a_graph_input_is_found():
    _, blocks = blocks_of(_residual_with_leak("none"))
    assert [(b.kind, b.entry) for b in blocks] == [("mlp", "x")]
    out = depth(_residual_with_leak("none"), "depth{blocks=0}").model
    assert [n.op_type for n in out.graph.node] == ["Identity"]   # graph input -> output, name kept
    x = rand(3, D)
    np.testing.assert_array_equal(onnxopt.validate.run(onnxopt.validate.session(out), {"x": x})["y"], x)


def test_a_block_ending_in_the_model_output_hands_its_name_to_the_entry():
    b = Builder(2)
    r = b.op("Relu", ["x"])
    b.nodes.append(helper.make_node("Add", [r, linear(b, r, D, D)], ["y"]))
    m = b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])])
    out = depth(m, "depth{blocks=0}").model
    assert [n.op_type for n in out.graph.node] == ["Relu"] and out.graph.node[0].output[0] == "y"
    assert [o.name for o in out.graph.output] == ["y"]
    x = rand(3, D)
    np.testing.assert_array_equal(onnxopt.validate.run(onnxopt.validate.session(out), {"x": x})["y"], np.maximum(x, 0))


def test_a_shortcut_through_same_type_casts_is_still_an_identity_shortcut():
    # exporters (keras -> ONNX here) put no-op Casts on both Add operands
    b = Builder(3)
    r = b.op("Relu", ["x"])
    skip = b.op("Cast", [b.op("Identity", [r])], to=TensorProto.FLOAT)
    y = b.op("Add", [skip, b.op("Cast", [linear(b, r, D, D)], to=TensorProto.FLOAT)])
    b.nodes.append(helper.make_node("Relu", [y], ["y"]))
    m = b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])])
    _, blocks = blocks_of(m)
    assert [(blk.entry, blk.exit) for blk in blocks] == [(r, "y")]
    out = depth(m, "depth{blocks=0}").model
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    # a Cast that changes the type is not a pass-through: no block
    b2 = Builder(3)
    r = b2.op("Relu", ["x"])
    skip = b2.op("Cast", [b2.op("Cast", [r], to=TensorProto.FLOAT16)], to=TensorProto.FLOAT)
    b2.nodes.append(helper.make_node("Add", [skip, linear(b2, r, D, D)], ["y"]))
    m2 = b2.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])])
    assert blocks_of(m2)[1] == []


# ---------------------------------------------------------------------------------------------
# selection by measured sensitivity


@pytest.fixture(scope="module")
def resnet_calib(tmp_path_factory):
    # 16 samples: 8 select, 8 held out
    return write_calib(tmp_path_factory.mktemp("calib") / "img.npz", "image", images(16, 5))


def test_greedy_removes_the_least_sensitive_blocks_first(resnet_calib):
    m = resnet()
    one = depth(m, "depth{remove=1}", resnet_calib)
    stats = one.report.records[0].stats
    assert stats["removed_blocks"] == [1]             # the block with gamma 0.02
    single = stats["single_removal_cosine"]
    assert single[1] == max(single.values()) and single[1] > 0.99
    assert stats["deviation_on"] == "8 held-out samples"
    assert 0 < stats["output_cosine"] <= 1 and stats["output_max_rel"] > 0
    two = depth(m, "depth{remove=2}", resnet_calib).report.records[0].stats
    assert two["removed_blocks"] == [1, 2]             # then gamma 0.3
    ratio = depth(m, "depth{ratio=0.34}", resnet_calib).report.records[0].stats
    assert ratio["removed_blocks"] == [1]


def test_target_keeps_removing_while_cosine_holds(resnet_calib):
    m = resnet()
    single = depth(m, "depth{remove=1}", resnet_calib).report.records[0].stats["single_removal_cosine"]
    # a target just under the best single removal: exactly that block goes, nothing more
    t = single[1] - 1e-4
    res = depth(m, f"depth{{target={t}}}", resnet_calib)
    assert res.report.records[0].stats["removed_blocks"] == [1]
    nothing = depth(m, "depth{target=0.9999999}", resnet_calib)     # change guard checks "unchanged"
    assert not nothing.report.records[0].changed and n_ops(nothing.model, "Conv") == n_ops(m, "Conv")


def test_greedy_re_measures_after_each_removal():
    # pairs interact: 0 alone is best, but with 0 gone, 2 hurts less than 1
    table = {frozenset({0}): 0.9, frozenset({1}): 0.8, frozenset({2}): 0.7,
             frozenset({0, 1}): 0.5, frozenset({0, 2}): 0.6, frozenset({1, 2}): 0.1, frozenset({0, 1, 2}): 0.3}
    calls = []

    def score(removed):
        calls.append(removed)
        return Score(table[removed], table[removed], 1 - table[removed], 1)

    steps = greedy([0, 1, 2], score, count=2)
    assert [s.block for s in steps] == [0, 2]
    assert len(calls) == 3 + 2
    assert greedy([0, 1, 2], score, target=0.55) == steps[:2] and greedy([0, 1, 2], score, target=0.65) == steps[:1]


def test_evaluator_matches_models_with_blocks_removed(resnet_calib, tmp_path):
    m = resnet()
    graph, blocks = blocks_of(m)
    feeds = [{"image": a[None]} for a in images(4, 9)]
    ev = Evaluator(ir.to_proto(graph, ir.header_of(m)), blocks, feeds)
    try:
        assert ev.score(set()).cosine == pytest.approx(1.0, abs=1e-6)
        gated = ev.score({0})
    finally:
        ev.close()
    removed = depth(m, "depth{blocks=0}").model
    sess_a, sess_b = onnxopt.validate.session(m), onnxopt.validate.session(removed)
    cos = [onnxopt.validate.diff("l", onnxopt.validate.run(sess_a, f)["logits"],
                                 onnxopt.validate.run(sess_b, f)["logits"]).cosine for f in feeds]
    assert gated.cosine == pytest.approx(float(np.mean(cos)), abs=1e-5)
    assert gated.cosine < 0.9999


# ---------------------------------------------------------------------------------------------
# option contract


def test_refuses_without_calibration_unless_blocks_are_named():
    with pytest.raises(UsageError, match="needs --calib"):
        depth(resnet(), "depth{remove=1}")
    with pytest.raises(UsageError, match="say what to remove"):
        depth(resnet(), "depth")


def test_unknown_block_ids_and_too_many_blocks_are_usage_errors(resnet_calib):
    with pytest.raises(UsageError, match=r"no block 7;.*3 removable blocks \(ids 0-2\)"):
        depth(resnet(), "depth{blocks=1,7}")
    with pytest.raises(UsageError, match=r"remove=4.*3 removable blocks"):
        depth(resnet(), "depth{remove=4}", resnet_calib)


def test_named_blocks_with_calibration_report_the_deviation(resnet_calib):
    stats = depth(resnet(), "depth{blocks=2}", resnet_calib).report.records[0].stats
    assert stats["removed_blocks"] == [2] and stats["removed"][0].startswith("2:residual ")
    assert 0 < stats["output_cosine"] < 1


def test_is_lossy_and_registered():
    from onnxopt.pass_base import Numerics
    from onnxopt.registry import get_pass, lossless_pass_names

    assert get_pass("depth") is Depth
    assert Depth.numerics is Numerics.LOSSY and "depth" not in lossless_pass_names()


# ---------------------------------------------------------------------------------------------
# listing


def test_list_blocks_reports_costs_and_sensitivity(resnet_calib):
    m = resnet()
    plain = Depth.list_blocks(m, shapes={"image": (1, 3, 16, 16)})
    assert [i.id for i in plain] == [0, 1, 2] and all(i.sensitivity is None for i in plain)
    # block 0 (8 channels, 16x16): conv 8->4 1x1, 4->4 3x3, 4->8 1x1 at 16x16, plus 3 BN x 4 params
    assert plain[0].macs == 16 * 16 * (4 * 8 + 4 * 4 * 9 + 8 * 4)
    assert plain[0].params == 4 * 8 + 4 * 4 * 9 + 8 * 4 + 4 * (4 + 4 + 8)
    # block 2 sits after the stride-2 projection: 8x8, 16 channels
    assert plain[2].macs == 8 * 8 * (8 * 16 + 8 * 8 * 9 + 16 * 8)
    assert plain[0].ops["Conv"] == 3 and plain[0].first_node.startswith("n_Conv") and plain[0].nodes == 10
    measured = Depth.list_blocks(m, resnet_calib, samples=4)
    assert [i.macs for i in measured] == [i.macs for i in plain]
    sens = [i.sensitivity for i in measured]
    assert all(0 < s < 1 for s in sens) and max(sens) == sens[1]
    assert set(measured[0].to_dict()) >= {"id", "kind", "span", "params", "macs", "sensitivity", "max_rel"}
