"""The greedy rewrite driver: rules fire to a fixed point, recurse into subgraphs, count firings."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from helpers import assert_same, model, rand

from onnxopt import ir
from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule, apply_rules

HEAD = '<ir_version: 8, opset_import: ["" : 15]>'


def _double_neg_match(node, ctx):
    producer = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
    return producer if producer is not None and producer.op == "Neg" else None


def _double_neg_rewrite(rw, node, producer):
    rw.replace_all_uses(node.outputs[0], producer.inputs[0])
    rw.remove_node(node)


DOUBLE_NEG = RewriteRule("double-neg", "Neg", _double_neg_match, _double_neg_rewrite)


def _run(text, rules, verify=True):
    m = model(HEAD + text)
    graph = ir.to_graph(ir.from_proto(m))
    counts = apply_rules(graph, rules, PassContext(opsets={"": 15}, ir_version=8), verify_fixpoint=verify)
    graph.cleanup()
    return m, ir.to_proto(graph, ir.header_of(m)), counts


def test_rules_reach_a_fixed_point():
    m, out, counts = _run("""
    g (float[4] x) => (float[4] y) {
      a = Neg(x)
      b = Neg(a)
      c = Neg(b)
      d = Neg(c)
      y = Relu(d)
    }""", [DOUBLE_NEG])
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert counts["double-neg"] >= 2
    assert_same(m, out, {"x": rand(4)})


def test_driver_recurses_into_subgraphs():
    m, out, counts = _run("""
    g (bool c, float[4] x) => (float[4] y) {
      y = If(c) <
        then_branch = t () => (float[4] ty) { n1 = Neg(x)  n2 = Neg(n1)  ty = Relu(n2) },
        else_branch = e () => (float[4] ey) { ey = Relu(x) }>
    }""", [DOUBLE_NEG])
    assert counts["double-neg"] == 1
    for cond in (True, False):
        assert_same(m, out, {"c": np.array(cond), "x": rand(4)})


def test_verify_fixpoint_catches_rules_that_keep_firing():
    def always(node, ctx):
        return True

    def rename(rw, node, m):
        node.name = node.name + "x"

    flip = RewriteRule("never-done", "Relu", always, rename)
    with pytest.raises(AssertionError, match="did not reach a fixed point"):
        _run("g (float[4] x) => (float[4] y) { y = Relu(x) }", [flip])


def test_opset_range_and_benefit_order():
    seen = []

    def tag(label):
        def rewrite(rw, node, m):
            seen.append(label)
            node.op = "Sigmoid"  # stops either rule from matching again
        return rewrite

    low = RewriteRule("low", "Relu", lambda n, c: True, tag("low"), benefit=1)
    high = RewriteRule("high", "Relu", lambda n, c: True, tag("high"), benefit=5)
    old = RewriteRule("old-only", "Relu", lambda n, c: True, tag("old"), benefit=9, opsets=(1, 12))
    _run("g (float[4] x) => (float[4] y) { y = Relu(x) }", [low, old, high], verify=False)
    assert seen == ["high"]
