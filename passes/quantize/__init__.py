"""quantize: calibrated QDQ int8 quantization that ONNX Runtime's CPU EP runs as int8 kernels.

Modules, one job each: prepare (float folds), opset (Q/DQ flavour), ops (ORT's fusable groups),
calibration (streamed statistics), params (scales), plan (which nodes, which tensors), emit (QDQ
insertion), evaluate / sensitivity (accuracy-aware selection), latency (never slower than
fp32), report (per-node drift), dynamic and fp16 (the other modes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import onnx_graphsurgeon as gs

from onnxopt.pass_base import Numerics, Pass, PassContext, PassResult
from onnxopt.registry import register_pass


@register_pass
class Quantize(Pass):
    """Calibrated int8 QDQ (per-channel weights, uint8 activations) that stays faster than fp32."""

    name = "quantize"
    numerics = Numerics.LOSSY
    requires = ("toposorted", "shapes")

    @dataclass(frozen=True)
    class Options:
        mode: Literal["static", "dynamic", "fp16"] = field(default="static", metadata={
            "help": "static: calibrated QDQ int8; dynamic: MatMul/Gemm weights int8, activations at run "
                    "time; fp16: float16 conversion keeping I/O types"})
        calibration: Literal["auto", "minmax", "percentile", "entropy"] = field(default="auto", metadata={
            "help": "how activation ranges come from the calibration statistics (auto: the better of "
                    "minmax and percentile on the calibration samples)"})
        percentile: float = field(default=99.999, metadata={"help": "kept share of values for calibration=percentile"})
        samples: int = field(default=64, metadata={"help": "calibration samples used at most"})
        activations: Literal["uint8", "int8"] = field(default="uint8", metadata={
            "help": "activation type (uint8 is ORT's fast x86 path; int8 activations are slower)"})
        scale: Literal["float", "pow2"] = field(default="float", metadata={
            "help": "pow2: power-of-two scales for fixed-point targets (fidelity cost reported)"})
        bias_correction: Literal["auto", "on", "off"] = field(default="auto", metadata={
            "help": "subtract the expected output shift of weight rounding from the bias (auto: "
                    "when it scores better on the calibration samples)"})
        reduce_range: bool = field(default=False, metadata={"help": "7-bit weights, for CPUs without VNNI"})
        target: float = field(default=0.99, metadata={
            "help": "keep the most sensitive nodes float until the metric reaches this (0 disables)"})
        metric: Literal["auto", "cosine", "top1", "sqnr"] = field(default="auto", metadata={
            "help": "agreement with the float model on calibration samples (auto: top-1 position "
                    "agreement for probability outputs, cosine otherwise)"})
        eval_samples: int = field(default=16, metadata={"help": "calibration samples used to score candidates"})
        latency: Literal["measure", "rules", "off"] = field(default="measure", metadata={
            "help": "measure: time candidates and keep float where int8 does not pay; rules: known "
                    "slow int8 kernels only; off: quantize whatever fuses"})
        threads: tuple[int, ...] = field(default=(1, 2), metadata={
            "help": "ORT thread counts the latency guard checks (0: ORT's default, all cores)"})
        exclude: tuple[str, ...] = field(default=(), metadata={"help": "node names or op types to keep float"})
        ops: tuple[str, ...] = field(default=(), metadata={"help": "op types that may run int8 (empty: all ORT CPU fuses)"})
        embeddings: bool = field(default=True, metadata={"help": "int8 rows for large Gather tables (weight only)"})
        compress: bool = field(default=True, metadata={
            "help": "store the weights of nodes left float as int8 too (Cast*scale, folded by ORT at load)"})
        report: bool = field(default=True, metadata={"help": "per-node error report in the pass statistics"})

        def __post_init__(self):
            if not 0.0 < self.percentile <= 100.0:
                raise ValueError("percentile must be in (0, 100]")
            if self.samples < 1 or self.eval_samples < 1:
                raise ValueError("samples and eval-samples must be at least 1")
            if not 0.0 <= self.target <= 1.0:
                raise ValueError("target must be in [0, 1]")
            if not self.threads or any(t < 0 for t in self.threads):
                raise ValueError("threads must be 0 (ORT default) or positive")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        o = self.options
        if o.mode == "fp16":
            from .fp16 import convert_fp16
            return convert_fp16(graph, ctx, o)
        if o.mode == "dynamic":
            from .dynamic import quantize_dynamic
            return quantize_dynamic(graph, ctx, o)
        from .static import quantize_static
        return quantize_static(graph, ctx, o)
