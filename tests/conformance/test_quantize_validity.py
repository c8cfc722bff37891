"""Every `quantize` mode emits a valid model on the ONNX backend node tests.

quantize is lossy, so the lossless conformance suite (test_node_conformance.py) does not run it;
what must hold for any model is that the result is valid: onnx's checker accepts it, ONNX
Runtime loads and runs it, and the graph's inputs/outputs keep their names, element types and
shapes. Cases: those ORT passes as given that contain an op quantize handles and take at least
one float tensor input; the case's own inputs are the calibration data (one sample).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.passes.quantize import ops as quantize_ops

from . import harness

MODES = {
    "static": "quantize{latency=off target=0 report=false}",   # timing-free: deterministic
    "dynamic": "quantize{mode=dynamic}",
    "fp16": "quantize{mode=fp16}",
}


def _eligible(case: harness.Case) -> bool:
    return (any(n.op_type in quantize_ops.RULES for n in case.model.graph.node)
            and all(isinstance(v, np.ndarray) for v in case.inputs)
            and any(v.dtype.kind == "f" for v in case.inputs))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "quantize_case" not in metafunc.fixturenames:
        return
    try:
        cache = metafunc.config.cache.mkdir("onnxopt-conformance")
    except Exception:  # noqa: BLE001 - -p no:cacheprovider
        cache = None
    cases = harness.load_cases(cache)
    names = [name for name, case in cases.items() if _eligible(case)]
    metafunc.parametrize("quantize_case", [pytest.param((m, n), id=f"{m}-{n}", marks=pytest.mark.conformance)
                                           for n in names for m in MODES])


def test_quantize_emits_a_valid_model(quantize_case, tmp_path) -> None:
    mode, name = quantize_case
    case = harness.load_cases()[name]
    ref = harness.reference(case, "given")
    if not ref.ok:
        pytest.skip(harness.SKIP_GIVEN)
    names = [i.name for i in case.model.graph.input]
    np.savez(tmp_path / "sample.npz", **{n: v[None] for n, v in zip(names, case.inputs)})
    before = case.model.SerializeToString()
    result = onnxopt.run_pipeline(case.model, MODES[mode], None if mode == "dynamic" else tmp_path)
    out = result.model
    assert case.model.SerializeToString() == before, "the caller's model was modified"
    onnx.checker.check_model(out)
    assert [i.name for i in out.graph.input] == names
    assert [o.name for o in out.graph.output] == [o.name for o in case.model.graph.output]
    got = harness.run_ort(out, case.inputs)
    for want, have in zip(ref.outputs, got):
        assert np.shape(have) == np.shape(want) and np.asarray(have).dtype == np.asarray(want).dtype
