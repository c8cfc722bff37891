"""PassManager: requires established once, fixpoint groups, change guard, instrumentation records."""

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs
import pytest
from helpers import model

import onnxopt
from onnxopt import Numerics, Pass, PassFailedError, PassResult
from onnxopt import analysis
from onnxopt.registry import REGISTRY

HEAD = '<ir_version: 8, opset_import: ["" : 15]>'
CHAIN = model(HEAD + """
g (float[4] x) => (float[4] y) {
  a = Neg(x)
  b = Neg(a)
  c = Neg(b)
  y = Neg(c)
}""")


@dataclass(frozen=True)
class _Opts:
    pass


class PeelOneNegPair(Pass):
    """Test pass: removes ONE Neg(Neg(x)) pair per run, so a fixpoint needs several sweeps."""

    name = "test-peel"
    numerics = Numerics.EXACT
    requires = ("toposorted", "shapes")
    Options = _Opts

    def run(self, graph, ctx):
        ctx.scratch["runs"] = ctx.scratch.get("runs", 0) + 1
        for node in graph.nodes:
            inner = node.inputs[0].inputs[0] if node.op == "Neg" and node.inputs[0].inputs else None
            if inner is not None and inner.op == "Neg":
                src, out = inner.inputs[0], node.outputs[0]
                if any(o is out for o in graph.outputs):
                    continue
                for consumer in list(out.outputs):
                    consumer.inputs[consumer.inputs.index(out)] = src
                node.outputs.clear()
                graph.cleanup()
                return PassResult(changed=True, stats={"pairs": 1})
        return PassResult(changed=False)


class LiesAboutChange(Pass):
    """Test pass: edits the graph but claims it did not."""

    name = "test-liar"
    numerics = Numerics.EXACT
    Options = _Opts

    def run(self, graph, ctx):
        graph.nodes[0].op = "Abs"
        return PassResult(changed=False)


class ReluToGelu20(Pass):
    """Test pass: needs an operator of a newer opset (Gelu, opset 20) and raises it."""

    name = "test-gelu20"
    numerics = Numerics.LOSSY
    Options = _Opts

    def run(self, graph, ctx):
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Gelu"
        ctx.raise_opset("", 20)
        ctx.raise_opset("", 18)          # never lowers
        return PassResult(changed=True)


class NudgeScale(Pass):
    """Test pass: an APPROX rewrite that moves the output by 5e-5 relative (within 1e-4)."""

    name = "test-nudge"
    numerics = Numerics.APPROX
    Options = _Opts

    def run(self, graph, ctx):
        import numpy as np

        for node in graph.nodes:
            if node.op == "Mul":
                node.inputs[1] = gs.Constant("scale_nudged", np.array([1.0 + 5e-5], np.float32))
        return PassResult(changed=True)


TEST_PASSES = (PeelOneNegPair, LiesAboutChange, ReluToGelu20, NudgeScale)


@pytest.fixture
def test_passes():
    for cls in TEST_PASSES:
        REGISTRY.register(cls)
    yield
    for cls in TEST_PASSES:
        REGISTRY.unregister(cls.name)


def test_a_pass_raises_the_opset_for_the_result_and_every_instrument(test_passes, tmp_path):
    import onnx

    m = model('<ir_version: 7, opset_import: ["" : 15]>\ng (float[4] x) => (float[4] y) { y = Relu(x) }')
    result = onnxopt.run_pipeline(m, "test-gelu20,cleanup", verify_each=True, dump_after=tmp_path)
    for out in [result.model] + [onnx.load(p) for p in sorted(tmp_path.glob("*.onnx"))]:
        onnx.checker.check_model(out, full_check=True)
        assert {i.domain: i.version for i in out.opset_import}[""] == 20 and out.ir_version >= 9
    assert [n.op_type for n in result.model.graph.node] == ["Gelu"]
    assert {i.domain: i.version for i in m.opset_import}[""] == 15 and m.ir_version == 7  # input untouched


def test_fixpoint_group_repeats_until_nothing_changes(test_passes):
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) {
      a = Neg(x)
      b = Neg(a)
      c = Neg(b)
      d = Neg(c)
      y = Relu(d)
    }""")
    result = onnxopt.run_pipeline(m, "fixpoint{max-iters=10}(test-peel)", change_guard=True, verify_each=True)
    names = [r.name for r in result.report.records]
    assert names == ["test-peel"] * 3  # two pairs removed, then one sweep that changes nothing
    assert [r.changed for r in result.report.records] == [True, True, False]
    assert [n.op_type for n in result.model.graph.node] == ["Relu"]


def test_fixpoint_respects_max_iters(test_passes):
    result = onnxopt.run_pipeline(CHAIN, "fixpoint{max-iters=1}(test-peel)")
    assert len(result.report.records) == 1


def test_requires_are_established_once_until_a_pass_changes_the_graph(test_passes, monkeypatch):
    calls = []
    original = dict(analysis.ESTABLISH)
    monkeypatch.setitem(analysis.ESTABLISH, "shapes", lambda g, c: calls.append("shapes") or original["shapes"](g, c))
    onnxopt.run_pipeline(CHAIN, "test-peel,test-peel,test-peel")
    # run 1 establishes and changes the graph -> run 2 re-establishes, finds nothing (the last
    # pair feeds the graph output) -> run 3 reuses what run 2 established
    assert calls == ["shapes", "shapes"]
    calls.clear()
    onnxopt.run_pipeline(model(HEAD + "g (float[4] x) => (float[4] y) { y = Relu(x) }"), "test-peel,test-peel")
    assert calls == ["shapes"]  # nothing changed: established once for both runs


def test_change_guard_catches_a_pass_that_lies(test_passes):
    with pytest.raises(PassFailedError, match="said changed=False but modified the graph"):
        onnxopt.optimize(CHAIN, passes="test-liar", change_guard=True)


def test_records_hold_numerics_options_and_node_counts(test_passes):
    result = onnxopt.run_pipeline(CHAIN, "cleanup,test-peel")
    first, second = result.report.records
    assert first.options.startswith("cleanup{") and first.numerics == "exact"
    assert second.nodes_before == 4 and second.nodes_after == 2
    assert result.numerics is Numerics.EXACT


def test_optimize_rejects_unknown_keyword():
    with pytest.raises(onnxopt.UsageError, match="unknown option"):
        onnxopt.optimize(CHAIN, passes="cleanup", no_such_thing=True)


def test_shapes_analysis_sees_through_large_weights():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxopt import ir
    from onnxopt.pass_base import PassContext

    w = numpy_helper.from_array(np.ones((512, 1024), np.float32), "w")  # 2 MB: exported as dims only
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    loaded = ir.from_proto(m)
    graph = ir.to_graph(loaded)
    graph.tensors()["w"].values = np.asarray(graph.tensors()["w"].values)  # array-backed, like a memory map
    analysis.establish_shapes(graph, PassContext(opsets={"": 17}, ir_version=8, header=ir.header_of(m)))
    assert graph.tensors()["t"].shape == ["N", 1024]
    assert graph.tensors()["w"].values.shape == (512, 1024)  # placeholders restored


def test_inferred_shapes_do_not_leak_into_the_output(test_passes):
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) {
      a = Neg(x)
      b = Neg(a)
      c = Exp(b)
      y = Relu(c)
    }""")
    out = onnxopt.optimize(m, passes="test-peel")  # requires shapes: they are inferred, then dropped
    assert len(out.graph.value_info) == 0
    assert [o.name for o in out.graph.output] == ["y"]


def test_shapes_then_constant_lifting_does_not_break_the_cleanup_of_annotations(test_passes):
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) {
      a = Neg(x)
      b = Neg(a)
      k = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
      c = Add(b, k)
      y = Relu(c)
    }""")
    out = onnxopt.optimize(m, passes="test-peel,cleanup")  # shapes annotate k, cleanup lifts it
    assert [n.op_type for n in out.graph.node] == ["Add", "Relu"]


def test_verify_each_holds_each_pass_to_its_own_drift_and_records_the_total(test_passes):
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) <float[1] scale = {1.0}> {
      s = Mul(x, scale)
      n = Neg(s)
      y = Neg(n)
    }""")
    # the exact pass after it is compared with test-nudge's outputs, not charged with its 5e-5
    # (session 1 compared every pass with the original: test-peel failed at 1e-5)
    result = onnxopt.run_pipeline(m, "test-nudge,test-peel", verify_each=True, shapes={"x": (4,)})
    nudge, peel = result.report.records
    assert 2e-5 < nudge.verify["vs_original_max_rel"] < 1e-4
    assert peel.verify["ok"] and max(o["max_rel"] for o in peel.verify["outputs"]) == 0.0
    assert peel.verify["vs_original_max_rel"] == nudge.verify["vs_original_max_rel"]
