"""Golden tests for `cleanup`: structure asserted on the printed/parsed model, numerics through ORT."""

import numpy as np
import onnx
import pytest
from helpers import assert_same, model, ops, rand

import onnxopt
from onnxopt import ir
from onnxopt.passes.cleanup import Cleanup
from onnxopt.pass_base import PassContext

HEAD = '<ir_version: 8, opset_import: ["" : 15]>'


def clean(m, **options):
    return onnxopt.optimize(m, passes="cleanup", change_guard=True, verify_each=True, **options)


def test_constant_nodes_become_initializers():
    m = model(HEAD + """
    g (float[2,3] x) => (float[2,3] y) {
      c = Constant<value = float[3] {1.0, 2.0, 3.0}>()
      k = Constant<value_float = 2.0>()
      t = Mul(x, c)
      y = Add(t, k)
    }""")
    out = clean(m)
    assert ops(out) == ["Mul", "Add"]
    assert sorted(i.name for i in out.graph.initializer) == ["c", "k"]
    assert_same(m, out, {"x": rand(2, 3)})


def test_constant_that_is_a_graph_output_stays_a_node():
    m = model(HEAD + """
    g (float[3] x) => (float[3] y, float[1] c) {
      c = Constant<value = float[1] {1.0}>()
      y = Add(x, c)
    }""")
    out = clean(m)
    assert ops(out) == ["Constant", "Add"]
    assert [o.name for o in out.graph.output] == ["y", "c"]


def test_identity_chain_and_dropout_removed_output_names_kept():
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) {
      a = Relu(x)
      b = Identity(a)
      c = Dropout(b)
      y = Identity(c)
    }""")
    out = clean(m)
    assert ops(out) == ["Relu"]
    assert out.graph.node[0].output[0] == "y"
    assert_same(m, out, {"x": rand(4)})


def test_identity_between_graph_input_and_output_is_kept():
    m = model(HEAD + "g (float[4] x) => (float[4] y) { y = Identity(x) }")
    out = clean(m)
    assert ops(out) == ["Identity"]


def test_identity_feeding_two_graph_outputs_keeps_both_names():
    m = model(HEAD + """
    g (float[4] x) => (float[4] a, float[4] y) {
      a = Relu(x)
      y = Identity(a)
    }""")
    out = clean(m)
    assert [o.name for o in out.graph.output] == ["a", "y"]
    assert ops(out) == ["Relu", "Identity"]


def test_dropout_in_training_mode_or_with_used_mask_is_kept():
    m = model(HEAD + """
    g (float[4] x, bool t) => (float[4] y, bool[4] mask) {
      y, mask = Dropout(x, , t)
    }""".replace("Dropout(x, , t)", "Dropout(x, r, t)").replace("{\n      y", "<float r = {0.5}>{\n      y"))
    out = onnxopt.optimize(m, passes="cleanup", change_guard=True)  # random outputs: no numeric check
    assert ops(out) == ["Dropout"]


def test_dead_nodes_and_unused_initializers_removed():
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) <float[4] unused = {1,2,3,4}> {
      d1 = Exp(x)
      d2 = Log(d1)
      y = Relu(x)
    }""")
    out = clean(m)
    assert ops(out) == ["Relu"]
    assert len(out.graph.initializer) == 0


def test_duplicate_initializers_and_subexpressions_merge():
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) <float[4] w1 = {1,2,3,4}, float[4] w2 = {1,2,3,4}> {
      a = Mul(x, w1)
      b = Mul(x, w2)
      ea = Exp(a)
      eb = Exp(b)
      y = Add(ea, eb)
    }""")
    out = clean(m)
    assert ops(out) == ["Mul", "Exp", "Add"]
    assert len(out.graph.initializer) == 1
    assert_same(m, out, {"x": rand(4)})


def test_random_ops_are_not_merged():
    m = model(HEAD + """
    g (float[4] x) => (float[4] y) {
      a = RandomUniformLike(x)
      b = RandomUniformLike(x)
      y = Add(a, b)
    }""")
    out = clean(m)
    assert ops(out).count("RandomUniformLike") == 2


def test_subgraphs_are_cleaned_and_outer_values_kept_alive():
    m = model(HEAD + """
    g (bool c, float[4] x) => (float[4] y) {
      outer = Exp(x)
      unused = Log(x)
      y = If(c) <
        then_branch = t () => (float[4] ty) {
          k = Constant<value = float[1] {2.0}>()
          i = Identity(outer)
          ty = Mul(i, k)
        },
        else_branch = e () => (float[4] ey) {
          ey = Identity(outer)
        }>
    }""")
    out = clean(m)
    assert ops(out) == ["Exp", "If"]
    then = out.graph.node[1].attribute[0].g if out.graph.node[1].attribute[0].name == "then_branch" else out.graph.node[1].attribute[1].g
    assert [n.op_type for n in then.node] == ["Mul"]
    for cond in (True, False):
        assert_same(m, out, {"c": np.array(cond), "x": rand(4)})


def test_nothing_to_do_reports_unchanged_and_keeps_fingerprint():
    m = model(HEAD + "g (float[4] x) => (float[4] y) { y = Relu(x) }")
    loaded = ir.from_proto(m)
    graph = ir.to_graph(loaded)
    before = ir.fingerprint(graph)
    result = Cleanup().run(graph, PassContext(opsets={"": 15}, ir_version=8))
    assert result.changed is False and result.stats == {}
    assert ir.fingerprint(graph) == before


def test_ir3_models_keep_constant_nodes():
    m = onnx.parser.parse_model('<ir_version: 3, opset_import: ["" : 8]> g (float[3] x) => (float[3] y) '
                                '{ c = Constant<value = float[1] {1.0}>() y = Add(x, c) }')
    out = clean(m)
    assert ops(out) == ["Constant", "Add"]


def test_custom_domain_ops_and_functions_survive():
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 15, "local" : 1, "my.custom" : 1]>
    g (float[3] x) => (float[3] y) {
      a = local.twice(x)
      b = Identity(a)
      y = my.custom.Thing(b)
    }
    <domain: "local", opset_import: ["" : 15]>
    twice (i) => (o) { o = Add(i, i) }
    ''')
    out = onnxopt.optimize(m, passes="cleanup")  # the checker accepts unknown domains
    assert [(n.domain, n.op_type) for n in out.graph.node] == [("local", "twice"), ("my.custom", "Thing")]
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 15), ("local", 1), ("my.custom", 1)}
    assert [f.name for f in out.functions] == ["twice"]


def test_provenance_recorded():
    m = model(HEAD + "g (float[4] x) => (float[4] y) { y = Relu(x) }")
    out = onnxopt.optimize(m, passes="cleanup{cse=false}")
    props = {p.key: p.value for p in out.metadata_props}
    assert props["onnxopt.pipeline"] == "cleanup{lift-constants=true cse=false max-iters=8}"
    assert props["onnxopt.version"] == onnxopt.__version__
