"""ONNX backend node tests through every lossless onnxopt pass (DESIGN.md section 6).

Test ids: ``test_node_case[<pass>-<mode>-<case>]``, e.g. ``test_node_case[cleanup-given-test_abs]``
and ``test_node_case[fold-frozen-test_abs]``.  Modes and the notion of "ORT passes" are defined
in harness.py.  A case ORT does not pass is skipped (with one fixed reason per mode, so ``-rs``
groups them); every other outcome is a plain pass or failure, never xfail.

Select with ``-k``: ``-k 'cleanup-given'``, ``-k test_abs``; ``-m 'not conformance'`` leaves the
whole suite out.  ``ONNXOPT_CONFORMANCE_PASSES=cleanup,fold`` overrides the pass list (default:
``onnxopt.registry.lossless_pass_names()``; while onnxopt lacks it, an onnx-graphsurgeon
round-trip named ``gsroundtrip`` stands in).
"""

from __future__ import annotations

import pytest

from . import harness


def test_node_case(conformance_case: tuple[str, str, str], conformance_transform_factory) -> None:
    pass_name, mode, case_name = conformance_case
    case = harness.load_cases()[case_name]
    ref = harness.reference(case, mode)
    if not ref.ok:
        pytest.skip(harness.SKIP_GIVEN if mode == "given" else harness.SKIP_FROZEN)
    transform = conformance_transform_factory(pass_name)
    failure = None
    try:
        harness.check_transformed(
            case, mode, transform, check_mutation=pass_name != "gsroundtrip"
        )
    except harness.ConformanceFailure as e:
        failure = f"{pass_name} / {mode} / {case_name}: {e}"
    if failure is not None:  # outside the except: no chained tracebacks in the report
        pytest.fail(failure, pytrace=False)
