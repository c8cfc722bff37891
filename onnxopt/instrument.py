"""Instrumentation around each pass: timing, verify-each, dump-after and the change guard.

Instruments see the graph before and after each pass; they return data (records) and raise
``PassFailedError`` naming the pass when it broke its contract. Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import ir, validate
from .errors import PassFailedError
from .pass_base import Numerics, Pass, PassResult


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
    """Inputs and the ORIGINAL model's outputs, against which every pass is verified."""

    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    rebased_after: list[str] = field(default_factory=list)


class VerifyEach(Instrument):
    """Checker plus numerics after every pass, with the tolerance the pass's Numerics promises.

    After a LOSSY pass the reference is re-based to that pass's outputs (and its drift recorded),
    so exact passes later in the pipeline are still held to their strict tolerance.
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
        if numerics is Numerics.LOSSY or math.isinf(numerics.tolerance):
            self.reference.outputs = got
            self.reference.rebased_after.append(p.name)
