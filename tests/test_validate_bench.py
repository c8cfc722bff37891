"""compare / bench / --validate / reports: the issue-4 contract through the real CLI and ORT."""

import json

import numpy as np
import onnx
import pytest
from helpers import model
from onnx import numpy_helper

from onnxopt import validate
from onnxopt.cli import main

CONV = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,16,16] x) => (float[N,8,16,16] y, float[N,8] pooled) {
  c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
  y = Relu(c)
  p = GlobalAveragePool(y)
  pooled = Flatten(p)
}"""


def _with_weights() -> onnx.ModelProto:
    m = onnx.parser.parse_model(CONV)
    rng = np.random.default_rng(0)
    m.graph.initializer.extend([numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
                                numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")])
    onnx.checker.check_model(m)
    return m


@pytest.fixture
def models(tmp_path):
    a, b, c = tmp_path / "a.onnx", tmp_path / "same.onnx", tmp_path / "scaled.onnx"
    onnx.save(_with_weights(), a)
    onnx.save(_with_weights(), b)
    scaled = _with_weights()
    w = scaled.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, "w"))
    onnx.save(scaled, c)
    return a, b, c


def call(capsys, *args):
    code = main([str(x) for x in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_compare_identical_models_passes(models, capsys):
    a, same, _ = models
    code, out, err = call(capsys, "compare", a, same, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["ok"] is True
    assert {o["name"] for o in rep["outputs"]} == {"y", "pooled"}
    assert all(o["max_abs"] == 0 and o["cosine"] == pytest.approx(1.0) for o in rep["outputs"])


def test_compare_scaled_conv_weight_fails_with_exit_1(models, capsys):
    a, _, scaled = models
    code, out, err = call(capsys, "compare", a, scaled, "--json", "--shape", "x=2,3,16,16")
    assert code == 1
    rep = json.loads(out)
    assert rep["ok"] is False
    for o in rep["outputs"]:
        assert o["max_abs"] > 0.1 and o["cosine"] < 1.0 and o["max_rel"] > 1e-3


def test_compare_human_output_and_bad_inputs(models, tmp_path, capsys):
    a, same, _ = models
    code, out, _ = call(capsys, "compare", a, same)
    assert code == 0 and "pooled" in out and "ok" in out
    code, _, err = call(capsys, "compare", a, tmp_path / "missing.onnx")
    assert code == 2 and err.startswith("onnxopt: error:") and err.count("\n") == 1


def test_compare_uses_given_inputs(models, tmp_path, capsys):
    a, _, scaled = models
    data = tmp_path / "in.npz"
    np.savez(data, x=np.zeros((2, 3, 16, 16), np.float32))  # zero input: the scaled weight is invisible
    code, out, _ = call(capsys, "compare", a, scaled, "--inputs", data, "--json")
    assert code == 0, out
    assert json.loads(out)["samples"] == 2


def test_bench_json_reports_median(models, capsys):
    a, _, _ = models
    code, out, err = call(capsys, "bench", a, "--json", "--runs", "5", "--warmup", "1", "--threads", "1")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["median_ms"] > 0 and stats["p90_ms"] >= stats["median_ms"] >= stats["min_ms"]
    assert stats["provider"] == "CPUExecutionProvider" and stats["threads"] == 1 and len(stats["sha256"]) == 64


def test_bench_cuda_without_gpu_is_one_clear_line(models, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    a, _, _ = models
    code, out, err = call(capsys, "bench", a, "--device", "cuda")
    assert code == 2
    assert err.count("\n") == 1 and "CUDAExecutionProvider" in err and "Traceback" not in err


def test_optimize_validate_and_reports(models, tmp_path, capsys):
    a, _, _ = models
    for name in ("r.json", "r.html"):
        code, out, err = call(capsys, "optimize", a, "-o", tmp_path / "o.onnx", "--validate", "--report",
                              tmp_path / name, "--force")
        assert code == 0, err
        assert "latency" in out and "numerics" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["passes"][0]["name"] == "cleanup" and "seconds" in rep["passes"][0]
    assert rep["validation"]["ok"] is True and rep["latency"]["ratio"] > 0
    assert rep["before"]["op_histogram"]["Conv"] == 1
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "seconds per pass" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_optimize_json_output(models, tmp_path, capsys):
    a, _, _ = models
    code, out, err = call(capsys, "optimize", a, "-o", tmp_path / "o.onnx", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["pipeline"].startswith("cleanup{") and data["after"]["nodes"] == 4


def test_library_compare_returns_report(models):
    a, _, scaled = models
    rep = validate.compare(a, scaled, tol=1e-3)
    assert not rep.ok and rep.max_rel > 1e-3 and rep.samples == 3


def test_bench_rounds_shuffle_the_order_reproducibly():
    """A fixed order makes one model always run right after another (and pay for the caches it
    evicted); every model must lead and follow every other one."""
    from onnxopt.benchmark import round_orders

    labels = ["fp32", "ours", "theirs"]
    first = [next(o) for o in [round_orders(labels)] for _ in range(60)]
    again = [next(o) for o in [round_orders(labels)] for _ in range(60)]
    assert first == again
    assert all(sorted(r) == sorted(labels) for r in first)
    stream = [label for r in first for label in r]
    followers = {(a, b) for a, b in zip(stream, stream[1:]) if a != b}
    assert followers == {(a, b) for a in labels for b in labels if a != b}
    assert {r[0] for r in first} == set(labels)


def test_bench_pools_several_sessions_per_model(models):
    """Two sessions of one file can differ for their whole life; sessions=3 times each model
    in three sessions and pools the runs (one Stats per model, not per session)."""
    from onnxopt import benchmark

    a, b, _ = models
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    stats = benchmark.measure({"a": a, "b": b}, {"x": x}, threads=1, warmup=1, runs=4, sessions=3)
    assert set(stats) == {"a", "b"}
    assert all(s.runs == 12 and s.median_ms > 0 for s in stats.values())
    assert stats["a"].sha256 == benchmark.model_sha256(a)


def test_sessions_timed_side_by_side_do_not_spin(models):
    """Interleaved sessions must not busy-wait between runs (each one's spinning workers took
    the cores the next one ran on); a session timed alone keeps ORT's default."""
    from onnxopt import benchmark

    a, _, _ = models

    def spinning(sess) -> str:
        try:
            return sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ORT's default, spinning on
            return "default"

    assert spinning(benchmark._session(a, 2, "cpu", spinning=False)) == "0"
    assert spinning(benchmark._session(a, 2, "cpu")) == "default"
