"""Property tests for `prune` on random CNN graphs.

A seeded generator builds DAGs from the ops the channel analysis knows (plain, depthwise and
grouped Conv, BatchNormalization, activations, per-channel/scalar constants, residual Add/Mul,
Concat, Split, Slice, pooling, Resize, Pad, ConvTranspose, Flatten into Gemm) plus a few it
must block on, with channels zeroed the ways trainers leave them (zero rows, zero BN scale and
shift, zero BN scale only, zero per-channel multipliers). For every graph:

* lossless prune keeps outputs within 1e-5 and the checker happy (verify-each), says
  ``changed`` honestly (change guard), never adds parameters, and is idempotent;
* lossy prune (``ratio``) equals the original with the removed channels' exit weights zeroed
  (and their known constants folded): cutting tensors is exactly "these channels are gone".
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_same
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt import ir, validate
from onnxopt.pass_base import PassContext
from onnxopt.passes.prune import channels, ops, ranking, shapes, shrink

SEEDS = range(int(__import__("os").environ.get("PRUNE_SEEDS", 30)))


class RandomNet:
    """Grows a graph op by op; ``pool`` holds live 4-D tensors as (name, channels, size)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.pool = [("x", 3, 8)]
        self.count = 0

    def name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def const(self, base, value):
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def add(self, op, inputs, out_channels, size, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.pool.append((out, out_channels, size))
        return out

    def pick(self, min_channels=1):
        cands = [t for t in self.pool if t[1] >= min_channels]
        return cands[int(self.rng.integers(len(cands)))]

    def rows(self, n, p):
        return [k for k in range(n) if self.rng.random() < p]

    # -- ops -------------------------------------------------------------------------------------

    def conv(self):
        x, c, s = self.pick()
        depthwise = c > 1 and self.rng.random() < 0.25
        grouped = not depthwise and c % 2 == 0 and c >= 4 and self.rng.random() < 0.2
        group = c if depthwise else (2 if grouped else 1)
        cout = c if depthwise else int(self.rng.choice([4, 6, 8]))
        if grouped and cout % 2:
            cout += 1
        k = int(self.rng.choice([1, 3])) if s >= 3 else 1
        pad = k // 2 if self.rng.random() < 0.7 else 0
        w = self.rng.standard_normal((cout, c // group, k, k)).astype(np.float32)
        b = self.rng.standard_normal(cout).astype(np.float32)
        for r in self.rows(cout, 0.25):
            w[r] = 0
            b[r] = 0 if self.rng.random() < 0.6 else self.rng.choice([-0.5, 0.5])
        if grouped and self.rng.random() < 0.5:          # a whole group zero
            w[: cout // 2], b[: cout // 2] = 0, 0
        inputs = [x, self.const("w", w)] + ([self.const("b", b)] if self.rng.random() < 0.8 else [])
        self.add("Conv", inputs, cout, s + 2 * pad - k + 1, group=group, pads=[pad] * 4)

    def batchnorm(self):
        x, c, s = self.pick()
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        shift = self.rng.standard_normal(c).astype(np.float32)
        for r in self.rows(c, 0.3):
            scale[r] = 0
            shift[r] = 0 if self.rng.random() < 0.7 else shift[r]
        mean = (self.rng.standard_normal(c) * 0.1).astype(np.float32)
        var = self.rng.uniform(0.5, 2, c).astype(np.float32)
        self.add("BatchNormalization", [x] + [self.const(n, v) for n, v in
                                               (("s", scale), ("h", shift), ("m", mean), ("v", var))], c, s)

    def activation(self):
        x, c, s = self.pick()
        op = str(self.rng.choice(["Relu", "Sigmoid", "HardSwish", "LeakyRelu", "Tanh", "Clip"]))
        if op == "Clip":
            self.add("Clip", [x, self.const("lo", np.float32(-1)), self.const("hi", np.float32(1))], c, s)
        else:
            self.add(op, [x], c, s)

    def scale(self):
        x, c, s = self.pick()
        per_channel = self.rng.random() < 0.7
        k = self.rng.standard_normal((c, 1, 1) if per_channel else (1,)).astype(np.float32)
        if per_channel:
            k[self.rows(c, 0.2)] = 0
        self.add(str(self.rng.choice(["Mul", "Add", "Sub"])), [x, self.const("k", k)], c, s)

    def residual(self):
        x, c, s = self.pick()
        partners = [t for t in self.pool if t[1] == c and t[2] == s and t[0] != x]
        if not partners:
            return
        y = partners[int(self.rng.integers(len(partners)))][0]
        self.add(str(self.rng.choice(["Add", "Mul", "Max"])), [x, y], c, s)

    def concat(self):
        x, c, s = self.pick()
        partners = [t for t in self.pool if t[2] == s]
        y, cy, _ = partners[int(self.rng.integers(len(partners)))]
        self.add("Concat", [x, y], c + cy, s, axis=1)

    def split(self):
        x, c, s = self.pick(min_channels=2)
        first = int(self.rng.integers(1, c))
        outs = [self.name("split"), self.name("split")]
        self.nodes.append(helper.make_node("Split", [x, self.const("parts", np.array([first, c - first]))], outs, axis=1))
        self.pool += [(outs[0], first, s), (outs[1], c - first, s)]

    def slice(self):
        x, c, s = self.pick(min_channels=2)
        a = int(self.rng.integers(0, c - 1))
        b = int(self.rng.integers(a + 1, c + 1))
        self.add("Slice", [x, self.const("st", np.array([a])), self.const("en", np.array([b])),
                           self.const("ax", np.array([1]))], b - a, s)

    def pool_op(self):
        x, c, s = self.pick()
        if self.rng.random() < 0.5:
            self.add("MaxPool", [x], c, s, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        else:
            self.add("AveragePool", [x], c, s, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                     count_include_pad=int(self.rng.integers(2)))

    def resize(self):
        x, c, s = self.pick()
        if s > 8:
            return
        self.add("Resize", [x, "", self.const("sc", np.array([1, 1, 2, 2], np.float32))], c, 2 * s, mode="nearest")

    def pad(self):
        x, c, s = self.pick()
        self.add("Pad", [x, self.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]))], c, s + 2)

    def transpose_conv(self):
        x, c, s = self.pick()
        if s > 8:
            return
        cout = int(self.rng.choice([3, 4]))
        w = self.rng.standard_normal((c, cout, 2, 2)).astype(np.float32)
        w[self.rows(c, 0.2)] = 0
        self.add("ConvTranspose", [x, self.const("wt", w)], cout, 2 * s, strides=[2, 2])

    def blocker(self):
        x, c, s = self.pick()
        shape = self.name("shape")
        self.nodes.append(helper.make_node("Shape", [x], [shape]))
        self.add("Reshape", [x, shape], c, s)

    OPS = ("conv", "conv", "conv", "batchnorm", "activation", "scale", "residual", "concat", "split",
           "slice", "pool_op", "resize", "pad", "transpose_conv", "blocker")

    def build(self) -> onnx.ModelProto:
        for _ in range(int(self.rng.integers(4, 12))):
            getattr(self, str(self.rng.choice(self.OPS)))()
        x, c, s = self.pool[-1]
        head = self.add("Conv", [x, self.const("wh", self.rng.standard_normal((4, c, 1, 1)).astype(np.float32))], 4, s)
        gap = self.add("GlobalAveragePool", [head], 4, 1)
        flat = self.name("flat")
        self.nodes.append(helper.make_node("Flatten", [gap], [flat]))
        self.nodes.append(helper.make_node("Gemm", [flat, self.const("g", self.rng.standard_normal((4, 3)).astype(np.float32))], ["y"]))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]
        if self.rng.random() < 0.3:  # an intermediate graph output: its channels must stay
            name, c2, s2 = self.pool[int(self.rng.integers(1, len(self.pool)))]
            if name != "y":
                outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c2, s2, s2]))
        graph = helper.make_graph(self.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                                  outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def feeds(seed):
    return {"x": np.random.default_rng(seed + 999).standard_normal((1, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("seed", SEEDS)
def test_lossless_prune_on_random_graphs(seed):
    m = RandomNet(seed).build()
    result = onnxopt.run_pipeline(m, "prune", change_guard=True, verify_each=True)
    out = result.model
    assert_same(m, out, feeds(seed))
    stats = result.report.records[0].stats
    if result.report.changed:
        assert stats["params_after"] < stats["params_before"]
        assert stats["macs_after"] <= stats["macs_before"]
    again = onnxopt.run_pipeline(out, "prune", change_guard=True)
    assert not again.report.changed, f"second run still found {again.report.records[0].stats}"


@pytest.mark.parametrize("seed", SEEDS)
def test_lossy_prune_equals_zeroing_the_removed_channels_at_their_exits(seed):
    m = RandomNet(seed).build()
    opset = 17
    ctx = PassContext(opsets={"": opset}, ir_version=8)

    def analysed():
        g = ir.to_graph(ir.from_proto(m))
        g.toposort()
        return g, channels.analyze(g, opset, ops.build_rules(), shapes.infer(g, ctx))

    g, analysis = analysed()
    exact = analysis.exact_groups()
    score = ranking.importance(analysis, "l1")
    removed = analysis.keep_nonempty(exact | ranking.select(analysis, 0.5, score, analysis.prunable_groups(), exact))
    if not removed:
        pytest.skip("nothing prunable in this graph")
    shrink.apply(analysis, removed, opset)
    pruned = ir.to_proto(g, ir.header_of(m))

    zg, za = analysed()
    _zero_exits(zg, za, za.keep_masks(removed))
    zeroed = ir.to_proto(zg, ir.header_of(m))
    onnx.checker.check_model(pruned)
    a = validate.run(validate.session(zeroed), feeds(seed))
    b = validate.run(validate.session(pruned), feeds(seed))
    for name in a:
        d = validate.diff(name, a[name], b[name])
        assert d.shape_ok and d.max_rel <= 1e-4, f"{name}: {d}"


def _zero_exits(graph, analysis, masks):
    """The reference for lossy pruning: keep every tensor, zero the weights that read a removed
    channel at each exit and add its known constant (if any) to the exit's bias."""
    import onnx_graphsurgeon as gs

    for ex in analysis.exits:
        keep = masks.get(id(ex.tensor))
        if keep is None:
            continue
        node, gone = ex.node, ~keep
        values = analysis.tracks[id(ex.tensor)].values
        fold = np.where(np.isfinite(values), values, 0.0)[gone]
        wt = np.array(channels.const_array(node.inputs[1]), copy=True)
        if node.op == "Conv":
            co = wt.shape[0]
            delta = wt[:, gone].reshape(co, int(gone.sum()), -1).sum(axis=2).astype(np.float64) @ fold
            wt[:, gone] = 0
            bias = channels.const_array(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(co, np.float32)
            node.inputs[1] = gs.Constant(node.inputs[1].name + "_z", wt)
            new_bias = gs.Constant(node.outputs[0].name + "_bz", (bias + delta).astype(np.float32))
            if len(node.inputs) > 2:
                node.inputs[2] = new_bias
            else:
                node.inputs.append(new_bias)
        elif node.op == "ConvTranspose":
            wt[gone] = 0                           # only zero channels leave here exactly; lossy ones are dropped
            node.inputs[1] = gs.Constant(node.inputs[1].name + "_z", wt)
        elif node.op == "Gemm":
            delta = fold @ wt[gone].astype(np.float64)
            wt[gone] = 0
            node.inputs[1] = gs.Constant(node.inputs[1].name + "_z", wt)
            bias = channels.const_array(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(wt.shape[1], np.float32)
            new_bias = gs.Constant(node.outputs[0].name + "_bz", (bias + delta).astype(np.float32))
            if len(node.inputs) > 2:
                node.inputs[2] = new_bias
            else:
                node.inputs.append(new_bias)
        else:
            raise AssertionError(f"unexpected exit {node.op}")
