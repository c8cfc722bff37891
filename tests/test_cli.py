"""The CLI contract: one clear line and exit 2 on bad input, never a traceback, never a partial file."""

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from helpers import model

from onnxopt import Numerics, Pass, PassResult
from onnxopt.cli import main
from onnxopt.registry import REGISTRY

GOOD = """<ir_version: 8, opset_import: ["" : 15]>
g (float[N,4] x) => (float[N,4] y) {
  c = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
  i = Identity(x)
  y = Mul(i, c)
}"""


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.onnx"
    onnx.save(model(GOOD), path)
    return path


def call(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, fragment: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxopt: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name not in ("good.onnx",))


def test_optimize_success_writes_model_with_provenance(good, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, err = call(capsys, "optimize", good, "-o", out)
    assert code == 0, err
    m = onnx.load(out)
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Mul"]
    assert "nodes" in stdout


def _truncated(tmp_path, good):
    data = good.read_bytes()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("make, fragment", [
    (lambda t, g: t / "missing.onnx", "no such file"),
    (lambda t, g: _write(t, "empty.onnx", b""), "file is empty"),
    (_truncated, "not an ONNX model or truncated"),
    (lambda t, g: _write(t, "text.onnx", b"hello, I am not a model\n" * 20), "not an ONNX model"),
    (lambda t, g: _write(t, "random.onnx", np.random.default_rng(0).bytes(4096)), "not an ONNX model"),
    (lambda t, g: t, "is a directory"),
])
def test_bad_model_files(tmp_path, good, capsys, make, fragment):
    src = make(tmp_path, good)
    before = set(os.listdir(tmp_path))
    code, _, err = call(capsys, "optimize", src, "-o", tmp_path / "out.onnx")
    assert code == 2
    assert_one_line_error(err, fragment)
    assert set(os.listdir(tmp_path)) == before  # nothing written, no temp files left


def _with_opset(tmp_path, version, ir_version=None):
    m = model(GOOD)
    m.opset_import[0].version = version
    if ir_version:
        m.ir_version = ir_version
    p = tmp_path / "new.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_opset_newer_than_onnx_knows(tmp_path, capsys):
    code, _, err = call(capsys, "optimize", _with_opset(tmp_path, 99), "-o", tmp_path / "o.onnx")
    assert code == 2
    assert_one_line_error(err, "opset 99 of domain 'ai.onnx' is unsupported")


def test_ir_version_newer_than_onnx_knows(tmp_path, capsys):
    code, _, err = call(capsys, "optimize", _with_opset(tmp_path, 15, ir_version=99), "-o", tmp_path / "o.onnx")
    assert code == 2
    assert_one_line_error(err, "IR version 99")


def _external(tmp_path):
    m = model(GOOD.replace("float[4] {1.0, 2.0, 3.0, 4.0}", "float[4] {1.0, 2.0, 3.0, 4.0}"))
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32), "w"))
    m.graph.node.append(onnx.helper.make_node("Identity", ["w"], ["w_out"]))
    m.graph.output.append(onnx.helper.make_tensor_value_info("w_out", onnx.TensorProto.FLOAT, [4096]))
    p = tmp_path / "ext.onnx"
    onnx.save_model(m, p, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    return p


def test_missing_external_data(tmp_path, capsys):
    p = _external(tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    code, _, err = call(capsys, "optimize", p, "-o", tmp_path / "o.onnx")
    assert code == 2
    assert_one_line_error(err, "external data file 'ext.onnx.data'")
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_external_data(tmp_path, capsys):
    p = _external(tmp_path)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    code, _, err = call(capsys, "optimize", p, "-o", tmp_path / "o.onnx")
    assert code == 2
    assert_one_line_error(err, "is truncated")


@pytest.mark.parametrize("pipeline, fragment", [
    ("nosuchpass", "unknown pass 'nosuchpass'"),
    ("cleanup{nosuch=1}", "unknown option 'nosuch'"),
    ("cleanup{max-iters=many}", "expected an integer"),
    ("cleanup{cse=maybe}", "expected true or false"),
    ("cleanup{", "expected '}'"),
])
def test_bad_pipelines(good, tmp_path, capsys, pipeline, fragment):
    code, _, err = call(capsys, "optimize", good, "-o", tmp_path / "o.onnx", "-p", pipeline)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("args, fragment", [
    (["--no-such-flag"], "No such option"),
    (["--shape", "x=1,a"], "dimensions must be integers"),
    (["--calib", "/nonexistent/calib.npz", "--verify-each"], "no such file or directory"),
])
def test_bad_flags(good, tmp_path, capsys, args, fragment):
    code, _, err = call(capsys, "optimize", good, "-o", tmp_path / "o.onnx", *args)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_missing_output_option(good, capsys):
    code, _, err = call(capsys, "optimize", good)
    assert code == 2
    assert_one_line_error(err, "Missing option")


def test_refuses_to_overwrite_input_without_force(good, capsys):
    before = good.read_bytes()
    code, _, err = call(capsys, "optimize", good, "-o", good)
    assert code == 2
    assert_one_line_error(err, "refusing to overwrite the input")
    assert good.read_bytes() == before
    code, _, err = call(capsys, "optimize", good, "-o", good, "--force")
    assert code == 0, err
    assert [n.op_type for n in onnx.load(good).graph.node] == ["Mul"]


def test_output_directory_must_exist(good, tmp_path, capsys):
    code, _, err = call(capsys, "optimize", good, "-o", tmp_path / "nope" / "o.onnx")
    assert code == 2
    assert_one_line_error(err, "does not exist")


@dataclass(frozen=True)
class _NoOptions:
    pass


class _Breaker(Pass):
    """Test-only pass that claims exactness but scales the output (must be caught by verify-each)."""

    name = "test-breaker"
    numerics = Numerics.EXACT
    Options = _NoOptions

    def run(self, graph, ctx):
        for node in graph.nodes:
            if node.op == "Mul":
                node.op = "Add"
        return PassResult(changed=True)


@pytest.fixture
def breaker():
    REGISTRY.register(_Breaker)
    yield
    REGISTRY.unregister(_Breaker.name)


def test_verify_each_failure_exits_1_and_writes_nothing(good, tmp_path, capsys, breaker):
    code, _, err = call(capsys, "optimize", good, "-o", tmp_path / "o.onnx", "-p", "cleanup,test-breaker",
                        "--verify-each")
    assert code == 1
    assert_one_line_error(err, "pass 'test-breaker' (exact) moved output 'y'")
    assert leftovers(tmp_path) == []


def test_report_json_and_dump_after(good, tmp_path, capsys):
    import json

    dump = tmp_path / "dump"
    code, _, err = call(capsys, "optimize", good, "-o", tmp_path / "o.onnx", "-p", "cleanup,cleanup",
                        "--report", tmp_path / "r.json", "--dump-after", dump, "--verify-each", "--time-passes")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["cleanup", "cleanup"]
    assert report["passes"][0]["changed"] is True and report["passes"][1]["changed"] is False
    assert report["passes"][0]["verify"]["ok"] is True
    assert report["before"]["nodes"] == 3 and report["after"]["nodes"] == 1
    assert sorted(os.listdir(dump)) == ["001_cleanup.onnx", "002_cleanup.onnx"]


def test_info_and_passes(good, capsys):
    code, out, _ = call(capsys, "info", good)
    assert code == 0 and "Mul" in out and "ai.onnx:15" in out
    code, out, _ = call(capsys, "info", good, "--json")
    assert code == 0 and '"nodes": 3' in out
    code, out, _ = call(capsys, "passes")
    assert code == 0 and "cleanup" in out and "max-iters=8" in out and "default pipeline: " in out
    code, _, err = call(capsys, "passes", "nosuch")
    assert code == 2 and "unknown pass" in err


def test_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "optimize", str(bad), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


PLUGIN = '''
from dataclasses import dataclass
from onnxopt import Pass, PassResult, Numerics

class Noop(Pass):
    """A third-party pass that does nothing."""
    name = "third-party-noop"
    numerics = Numerics.EXACT

    @dataclass(frozen=True)
    class Options:
        level: int = 1

    def run(self, graph, ctx):
        return PassResult(changed=False)
'''


def test_third_party_pass_registers_through_entry_points(tmp_path, good):
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    dist = tmp_path / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[onnxopt.passes]\nthird-party-noop = myplugin:Noop\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "passes", "third-party-noop"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "third-party-noop" in proc.stdout and "level=1" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "optimize", str(good), "-o", str(tmp_path / "o.onnx"),
                           "-p", "third-party-noop{level=3},cleanup", "-q"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    props = {p.key: p.value for p in onnx.load(tmp_path / "o.onnx").metadata_props}
    assert props["onnxopt.pipeline"].startswith("third-party-noop{level=3},cleanup{")


def test_blocks_lists_candidates_of_the_demo_model(capsys):
    import json
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "models" / "demo" / "ppocr_cls.onnx"
    code, out, err = call(capsys, "blocks", demo, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) >= 1 and {"id", "kind", "span", "params", "macs"} <= set(rows[0])
    assert all(r["sensitivity"] is None for r in rows)  # no --calib: nothing measured
