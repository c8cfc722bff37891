"""The library entry point behind both ``onnxopt.optimize`` and the CLI's ``optimize``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from . import ir, validate
from .data import Dataset
from .errors import UsageError
from .instrument import ChangeGuard, DumpAfter, Instrument, Reference, VerifyEach
from .manager import PassManager, RunReport
from .pass_base import Numerics, PassContext
from .pipeline import Pipeline, parse
from .registry import default_pipeline
from .version import __version__

PROVENANCE_KEY = "onnxopt.pipeline"
VERSION_KEY = "onnxopt.version"


@dataclass
class OptimizeResult:
    """The optimized graph; ``model`` exports it in memory, ``save`` streams it to disk."""

    graph: Any
    template: onnx.ModelProto
    pipeline: Pipeline
    report: RunReport
    source: ir.LoadedModel
    extras: dict[str, Any] = field(default_factory=dict)
    _model: onnx.ModelProto | None = None

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = ir.to_proto(self.graph, self.template)
        return self._model

    def save(self, path: str | Path, *, external: bool | None = None, before_commit=None) -> Path:
        """Write atomically; ``before_commit(tmp_path)`` may veto (raise) before the file appears."""
        return ir.save_graph(self.graph, self.template, path, external=external, before_commit=before_commit)

    @property
    def numerics(self) -> Numerics:
        """The loosest promise of the passes that ran: what validation holds the output to."""
        order = [Numerics.EXACT, Numerics.APPROX, Numerics.LOSSY]
        seen = [Numerics(r.numerics) for r in self.report.records] or [Numerics.EXACT]
        return max(seen, key=order.index)


def open_model(model: onnx.ModelProto | str | Path, *, check: bool = True) -> ir.LoadedModel:
    if isinstance(model, ir.LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return ir.load(model, check=check)
    return ir.from_proto(model, check=check)


def open_data(calib: Dataset | str | Path | None) -> Dataset | None:
    if calib is None or isinstance(calib, Dataset):
        return calib
    return Dataset.open(calib)


def reference_feeds(loaded: ir.LoadedModel, data: Dataset | None, shapes=None, samples: int = 2):
    """Inputs for verification: user data when given, else seeded random ones."""
    source = loaded.path if loaded.path is not None else loaded.proto
    sess = validate.session(source)
    if data is not None:
        ranks = {i.name: len(i.shape) for i in sess.get_inputs()}
        feeds = data.take(ranks, samples)
        if feeds:
            return sess, feeds
    return sess, [validate.random_inputs(sess, shapes, seed=k) for k in range(samples)]


def run_pipeline(model, passes: str | Pipeline | None = None, calib=None, *, check: bool = True,
                 verify_each: bool = False, dump_after: str | Path | None = None, change_guard: bool = False,
                 shapes: dict[str, tuple[int, ...]] | None = None, progress=None) -> OptimizeResult:
    """Load, run the pipeline, export with provenance. Returns data; prints nothing."""
    pipeline = passes if isinstance(passes, Pipeline) else parse(passes or default_pipeline())
    loaded = open_model(model, check=check)
    data = open_data(calib)
    ctx = PassContext(opsets={imp.domain: imp.version for imp in loaded.proto.opset_import},
                      ir_version=loaded.proto.ir_version, calib=data, progress=progress,
                      header=ir.header_of(loaded.proto))
    instruments: list[Instrument] = []
    if change_guard:
        instruments.append(ChangeGuard())
    # instruments export with ctx.header itself: a pass that raises the opset updates it in place
    if verify_each:
        sess, feeds = reference_feeds(loaded, data, shapes)
        instruments.append(VerifyEach(Reference(feeds, [validate.run(sess, f) for f in feeds]), ctx.header))
    if dump_after is not None:
        instruments.append(DumpAfter(dump_after, ctx.header))
    graph = ir.to_graph(loaded)
    report = PassManager(pipeline, instruments).run(graph, ctx)
    template = ir.header_of(ctx.header)
    previous = next((p.value for p in template.metadata_props if p.key == PROVENANCE_KEY), "")
    ir.set_metadata(template, PROVENANCE_KEY, f"{previous} | {pipeline}" if previous else str(pipeline))
    ir.set_metadata(template, VERSION_KEY, __version__)
    return OptimizeResult(graph, template, pipeline, report, loaded)


def optimize(model: onnx.ModelProto | str | Path, passes: str | None = None, calib=None,
             **options: Any) -> onnx.ModelProto:
    """Optimize a model (proto or path) with a pipeline string; returns the new ModelProto.

    ``options``: check, verify_each, dump_after, change_guard, shapes (see ``run_pipeline``).
    """
    allowed = {"check", "verify_each", "dump_after", "change_guard", "shapes", "progress"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"optimize(): unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    return run_pipeline(model, passes, calib, **options).model
