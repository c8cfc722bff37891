"""Parametrisation, fixtures and the end-of-run summary of the node conformance suite."""

from __future__ import annotations

import os
import re
from collections import defaultdict

import pytest

from . import harness

_ID = re.compile(r"test_node_case\[(?P<pass_>.+)-(?P<mode>given|frozen)-(?P<case>[^\]]+)\]$")
_SKIP_REASONS = {harness.SKIP_GIVEN, harness.SKIP_FROZEN}


def _pass_names() -> tuple[list[str], object]:
    override = [
        n.strip() for n in os.environ.get("ONNXOPT_CONFORMANCE_PASSES", "").split(",") if n.strip()
    ]
    return harness.onnxopt_passes(override or None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: ONNX backend node tests run through onnxopt's lossless passes"
    )


def _cache_dir(config: pytest.Config):
    try:
        return config.cache.mkdir("onnxopt-conformance")  # .pytest_cache/d/onnxopt-conformance
    except Exception:  # noqa: BLE001 - -p no:cacheprovider
        return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_case" not in metafunc.fixturenames:
        return
    cases = harness.load_cases(_cache_dir(metafunc.config))
    names, _ = _pass_names()
    # Case-major order: the per-process reference cache (ORT's run of the untransformed case)
    # is hit by every pass and, under xdist's chunked scheduling, mostly in the same worker.
    params = [
        pytest.param((p, mode, c), id=f"{p}-{mode}-{c}", marks=pytest.mark.conformance)
        for c in cases
        for p in names
        for mode in harness.MODES
    ]
    metafunc.parametrize("conformance_case", params)


@pytest.fixture(scope="session")
def conformance_transform_factory():
    _, factory = _pass_names()
    cache: dict[str, harness.Transform] = {}

    def get(name: str) -> harness.Transform:
        if name not in cache:
            cache[name] = factory(name)
        return cache[name]

    return get


def _skip_reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    # Works the same under xdist: the controller receives every worker's reports.
    outcome: dict[str, tuple[str, str, str, str]] = {}  # nodeid -> (pass, mode, case, outcome)
    rank = {"passed": 0, "skipped": 1, "other-skip": 1, "failed": 2}
    for key in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(key, []):
            nodeid = getattr(rep, "nodeid", "")
            if "conformance" not in nodeid:
                continue
            m = _ID.search(nodeid)
            if not m:
                continue
            if key == "passed" and getattr(rep, "when", "call") != "call":
                continue
            res = {"passed": "passed", "failed": "failed", "error": "failed"}.get(key)
            if key == "skipped":
                res = "skipped" if _skip_reason(rep) in _SKIP_REASONS else "other-skip"
            prev = outcome.get(nodeid)
            if prev is None or rank[res] > rank[prev[3]]:
                outcome[nodeid] = (m["pass_"], m["mode"], m["case"], res)
    if not outcome:
        return
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    cases = set()
    for p, mode, case, res in outcome.values():
        table[(p, mode)][res] += 1
        cases.add(case)
    import onnx
    import onnxruntime

    tr = terminalreporter
    tr.write_sep("=", "onnxopt node conformance")
    tr.write_line(
        f"onnx {onnx.__version__} node cases run: {len(cases)}; "
        f"onnxruntime {onnxruntime.__version__} (CPU, graph optimizations off)"
    )
    tr.write_line(
        f"{'pass':<14}{'mode':<8}{'ORT passes':>11}{'still pass':>12}{'kept':>9}"
        f"{'ORT fails':>11}{'other skip':>12}"
    )
    for (p, mode) in sorted(table, key=lambda k: (k[0], harness.MODES.index(k[1]))):
        c = table[(p, mode)]
        base = c["passed"] + c["failed"]
        kept = f"{100.0 * c['passed'] / base:.2f}%" if base else "-"
        tr.write_line(
            f"{p:<14}{mode:<8}{base:>11}{c['passed']:>12}{kept:>9}{c['skipped']:>11}"
            f"{c['other-skip']:>12}"
        )
