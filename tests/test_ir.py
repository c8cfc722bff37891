"""Model I/O: external data in and out, atomic writes, metadata kept, >2 GB round trip."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from helpers import assert_same, model, rand
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt import ir


def _gemm_model(n_in=256, n_out=512, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((n_out,)).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Identity", ["t"], ["u"]),
             helper.make_node("Add", ["u", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])], [w, b])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.metadata_props.add(key="author", value="test")
    m.doc_string = "a doc"
    return m


def test_external_data_in_and_out(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save_model(_gemm_model(), src, save_as_external_data=True, location="in.onnx.data", size_threshold=0)
    loaded = ir.load(src)
    assert loaded.has_external_data
    graph = ir.to_graph(loaded)
    w = next(t for t in graph.tensors().values() if t.name == "w")
    assert isinstance(w.values, np.ndarray) and w.values.base is not None  # a memory map, not a copy
    out = tmp_path / "out.onnx"
    result = onnxopt.run_pipeline(src, "cleanup")
    ir.save(result.model, out, external=True)
    assert (tmp_path / "out.onnx.data").exists()
    assert sorted(os.listdir(tmp_path)) == ["in.onnx", "in.onnx.data", "out.onnx", "out.onnx.data"]
    reloaded = onnx.load(out)
    assert [n.op_type for n in reloaded.graph.node] == ["MatMul", "Add"]
    assert_same(_gemm_model(), reloaded, {"x": rand(3, 256)})


def test_metadata_doc_and_opsets_survive(tmp_path):
    out = onnxopt.optimize(_gemm_model(), passes="cleanup")
    assert out.doc_string == "a doc"
    props = {p.key: p.value for p in out.metadata_props}
    assert props["author"] == "test" and "onnxopt.pipeline" in props
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17)]


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old content")
    m = onnxopt.optimize(_gemm_model(), passes="cleanup")
    ir.save(m, out)
    assert os.listdir(tmp_path) == ["m.onnx"]
    onnx.checker.check_model(onnx.load(out))


def test_in_memory_model_with_dangling_external_refs_is_refused(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save_model(_gemm_model(), src, save_as_external_data=True, location="d.bin", size_threshold=0)
    proto = onnx.load(src, load_external_data=False)
    with pytest.raises(onnxopt.BadInputError, match="pass its file path"):
        onnxopt.optimize(proto)


def test_fingerprint_sees_weights_and_structure():
    a = ir.fingerprint(_gemm_model(seed=0))
    assert a == ir.fingerprint(_gemm_model(seed=0))
    assert a != ir.fingerprint(_gemm_model(seed=1))
    m = _gemm_model(seed=0)
    m.graph.node[2].op_type = "Sub"
    assert a != ir.fingerprint(m)


BIG_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from onnxopt.cli import main
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


@pytest.mark.slow
def test_model_over_2gb_round_trips_with_one_copy_of_the_weights(tmp_path):
    rows, cols = 540_000, 1024  # 2.21 GB of float32
    data = tmp_path / "big.onnx.data"
    table = np.memmap(data, mode="w+", dtype=np.float32, shape=(rows, cols))
    table[::50_000] = np.arange(cols, dtype=np.float32)  # a few marked rows, the rest zeros
    table.flush()
    del table
    offset = 0
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, cols], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "big.onnx.data"), ("offset", str(offset)), ("length", str(rows * cols * 4))):
        w.external_data.add(key=k, value=v)
    nodes = [helper.make_node("Gather", ["w", "idx"], ["g"]), helper.make_node("Identity", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("idx", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, cols])], [w])
    src = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)

    out = tmp_path / "out.onnx"
    proc = subprocess.run([sys.executable, "-c", BIG_SCRIPT, "optimize", str(src), "-o", str(out), "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["code"] == 0
    weights_gb = rows * cols * 4 / 1e9
    assert stats["peak_kb"] * 1024 / 1e9 < 1.5 * weights_gb, stats  # one copy, not two
    assert (tmp_path / "out.onnx.data").stat().st_size >= rows * cols * 4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"idx": np.array([50_000, 1], dtype=np.int64)})[0]
    assert np.array_equal(got[0], np.arange(cols, dtype=np.float32)) and not got[1].any()
    assert [n.op_type for n in onnx.load(out, load_external_data=False).graph.node] == ["Gather"]
