"""PassManager: runs a parsed pipeline over a gs.Graph, establishing each pass's ``requires``
once (LLVM's require<> analyses), repeating fixpoint groups, and calling instruments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .analysis import ESTABLISH, drop_added_shapes
from .instrument import Instrument, PassRecord
from .pass_base import PassContext
from .pipeline import Element, Pipeline
from .registry import get_pass


@dataclass
class RunReport:
    records: list[PassRecord] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)


class PassManager:
    def __init__(self, pipeline: Pipeline, instruments: list[Instrument] | None = None):
        self.pipeline = pipeline
        self.instruments = list(instruments or [])

    def run(self, graph: gs.Graph, ctx: PassContext) -> RunReport:
        report = RunReport()
        established: set[str] = set()
        self._run_elements(self.pipeline.elements, graph, ctx, report, established)
        drop_added_shapes(graph, ctx)
        return report

    def _run_elements(self, elements, graph, ctx, report, established) -> bool:
        changed = False
        for element in elements:
            if element.is_group:
                changed |= self._run_group(element, graph, ctx, report, established)
            else:
                changed |= self._run_pass(element, graph, ctx, report, established)
        return changed

    def _run_group(self, element: Element, graph, ctx, report, established) -> bool:
        # Only "fixpoint" exists today: repeat until a sweep changes nothing.
        changed = False
        for _ in range(element.options.max_iters):
            if not self._run_elements(element.children, graph, ctx, report, established):
                break
            changed = True
        return changed

    def _run_pass(self, element: Element, graph, ctx, report, established) -> bool:
        p = get_pass(element.name)(element.options)
        for need in p.requires:
            if need not in established and need in ESTABLISH:
                ESTABLISH[need](graph, ctx)
                established.add(need)
        nodes_before = _count_nodes(graph)
        for inst in self.instruments:
            inst.before(p, graph)
        start = time.perf_counter()
        result = p.run(graph, ctx)
        seconds = time.perf_counter() - start
        record = PassRecord(element.name, str(element), seconds, bool(result.changed), dict(result.stats),
                            nodes_before, _count_nodes(graph), p.effective_numerics().value)
        for inst in self.instruments:
            inst.after(p, graph, result, record)
        report.records.append(record)
        if result.changed:
            established.clear()
        return bool(result.changed)


def _count_nodes(graph: gs.Graph) -> int:
    total = 0
    for node in graph.nodes:
        total += 1
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                total += _count_nodes(attr)
    return total
