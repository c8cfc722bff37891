"""Instrumentation around each pass: timing, verify-each, dump-after and the change guard.

Instruments see the graph before and after each pass; they return data (records) and raise
``PassFailedError`` naming the pass when it broke its contract. Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import ir, validate
from .errors import PassFailedError
from .pass_base import Pass, PassResult


@dataclass
class PassRecord:
    """One pass execution, as it goes into reports."""

    name: str
    options: str
    seconds: float
    changed: bool
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    numerics: str = "exact"
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Instrument:
    def before(self, p: Pass, graph: gs.Graph) -> None:
        pass

    def after(self, p: Pass, graph: gs.Graph, result: PassResult, record: PassRecord) -> None:
        pass


class ChangeGuard(Instrument):
    """A pass that reports ``changed=False`` must leave the fingerprint unchanged (and vice versa
    a pass claiming change on an identical graph is reported in stats)."""

    def __init__(self) -> None:
        self._before: str | None = None

    def before(self, p, graph):
        self._before = ir.fingerprint(graph)

    def after(self, p, graph, result, record):
        after = ir.fingerprint(graph)
        if not result.changed and after != self._before:
            raise PassFailedError(f"pass '{p.name}' said changed=False but modified the graph")
        if result.changed and after == self._before:
            raise PassFailedError(f"pass '{p.name}' said changed=True but left the graph identical")


class DumpAfter(Instrument):
    """Write ``NNN_<pass>.onnx`` after each pass."""

    def __init__(self, directory: str | Path, template: onnx.ModelProto):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.template = template
        self.count = 0

    def after(self, p, graph, result, record):
        self.count += 1
        ir.save_graph(graph, self.template, self.directory / f"{self.count:03d}_{p.name}.onnx")


@dataclass
class Reference:
    """Inputs, the outputs the next pass is verified against (its input model's), and the
    ORIGINAL model's outputs (for the cumulative drift)."""

    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    original: list[dict[str, np.ndarray]] | None = None

    def __post_init__(self):
        if self.original is None:
            self.original = self.outputs


class VerifyEach(Instrument):
    """Checker plus numerics after every pass, with the tolerance the pass's Numerics promises.

    Each pass is compared with the model it was given (the reference moves on after every
    pass), so a pass answers for its own drift only: an exact pass after an approximate one is
    held to 1e-5 against the approximate pass's outputs, not charged with that pass's 1e-7 on a
    near-zero map. The drift against the original model is recorded as well
    (``vs_original_max_rel``, ``vs_original_cosine``).
    """

    def __init__(self, reference: Reference, template: onnx.ModelProto):
        self.reference = reference
        self.template = template

    def after(self, p, graph, result, record):
        model = ir.to_proto(graph, self.template)
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise PassFailedError(f"pass '{p.name}' produced an invalid model: {str(exc).splitlines()[0]}") from None
        try:
            sess = validate.session(model)
            got = [validate.run(sess, f) for f in self.reference.feeds]
        except Exception as exc:  # noqa: BLE001 - any ORT failure here is the pass's fault
            raise PassFailedError(f"pass '{p.name}' produced a model ONNX Runtime cannot run: "
                                  f"{str(exc).strip().splitlines()[0][:300]}") from None
        numerics = p.effective_numerics()
        report = validate.compare_outputs(self.reference.outputs, got, numerics.tolerance)
        record.verify = report.to_dict()
        if not report.ok:
            worst = max(report.outputs, key=lambda o: o.max_rel)
            raise PassFailedError(f"pass '{p.name}' ({numerics.value}) moved output '{worst.name}' by "
                                  f"max rel {worst.max_rel:.3g} > {numerics.tolerance:g}")
        total = validate.compare_outputs(self.reference.original, got, math.inf)
        record.verify["vs_original_max_rel"] = total.max_rel
        record.verify["vs_original_cosine"] = min((o.cosine for o in total.outputs), default=1.0)
        self.reference.outputs = got
