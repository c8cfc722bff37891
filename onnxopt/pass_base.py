"""The Pass protocol: what a pass declares and what it gets back from the framework."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx_graphsurgeon as gs


class Numerics(enum.Enum):
    """How far a pass may move the outputs; sets the verify-each tolerance."""

    EXACT = "exact"      # bit-for-bit up to float reassociation
    APPROX = "approx"    # algebraically equal, float rounding differs (folds, fusions)
    LOSSY = "lossy"      # changes the function on purpose (quantize, prune ratio, depth)

    @property
    def tolerance(self) -> float:
        """Max relative error allowed against the original model's reference outputs."""
        return {"exact": 1e-5, "approx": 1e-4, "lossy": float("inf")}[self.value]


@dataclass
class PassResult:
    """What a pass did: an honest ``changed`` plus statistics for the report."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """Per-run state a pass may read: opsets, calibration data, progress, cached analyses.

    Passes keep their own state here (or in the graph), never in globals or class attributes.
    """

    opsets: dict[str, int] = field(default_factory=dict)
    ir_version: int = 0
    calib: Any = None                              # onnxopt.data.Dataset or None
    progress: Callable[[str, int, int], None] | None = None
    analyses: dict[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
    header: Any = None                             # onnx.ModelProto without graph: ir_version, opsets, metadata

    def to_model(self, graph: gs.Graph):
        """Export the current graph as a self-contained ModelProto (for ORT runs inside a pass)."""
        from . import ir

        if self.header is None:
            raise RuntimeError("PassContext.header is not set")
        return ir.to_proto(graph, self.header)

    @property
    def opset(self) -> int:
        """The default-domain opset version."""
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))

    def raise_opset(self, domain: str, version: int) -> None:
        """Let the output model use ``domain``'s operators at ``version`` (never lowers).

        The caller adapts whatever operators changed meaning between the versions. The header,
        which every export (result, --verify-each, --dump-after) is built from, follows, and the
        IR version rises to the least one that opset needs.
        """
        import onnx

        key = "" if domain in ("", "ai.onnx") else domain
        current = self.opsets.get(key, self.opsets.get("ai.onnx", 0) if key == "" else 0)
        if version <= current:
            return
        self.opsets.pop("ai.onnx" if key == "" else key, None)
        self.opsets[key] = version
        if self.header is None:
            return
        imports = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in self.header.opset_import}
        imports[key] = version
        del self.header.opset_import[:]
        self.header.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in imports.items())
        needed = onnx.helper.find_min_ir_version_for(list(self.header.opset_import), ignore_unknown=True)
        if self.header.ir_version < needed:
            self.header.ir_version = needed
        self.ir_version = max(self.ir_version, self.header.ir_version)

    def report_progress(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


class Pass:
    """Base class. Subclasses set ``name``, ``numerics``, ``requires``, a nested frozen
    dataclass ``Options``, and implement ``run``. An instance holds its options and nothing else.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    numerics: ClassVar[Numerics] = Numerics.EXACT
    requires: ClassVar[tuple[str, ...]] = ()

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    def effective_numerics(self) -> Numerics:
        """A pass whose options make it lossy (e.g. prune ratio>0) overrides this."""
        return self.numerics

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - protocol
        raise NotImplementedError

    @classmethod
    def describe(cls) -> str:
        doc = (cls.summary or cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
