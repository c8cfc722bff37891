"""Where ONNX Runtime's CPU execution provider turns a QDQ group into an int8 kernel.

Mirrors ORT's QDQ selector/action transformer (onnxruntime/core/optimizer/qdq_transformer/
selectors_actions): a group is DQ on every listed input -> op -> Q on the output, and ORT
replaces it with the kernel named here. Anything not listed runs float between a DQ and a Q,
which only costs time, so the planner keeps such ops float. Facts worth keeping in mind:

* Conv, MatMul and Gemm need uint8 activations (int8 activations fuse only on ARM); weights
  int8 (per-channel allowed); Conv/Gemm bias must be int32 with scale s_x * s_w.
* MatMul without a Q on its output becomes MatMulIntegerToFloat; MatMul followed by
  Add(bias DQ int32) becomes QGemm (ORT first fuses MatMul+Add into Gemm). Gemm's Q is optional.
* A Relu or Clip between the op and its Q is dropped when the Q's range makes it redundant.
* Pass-through ops run directly on uint8 when the Q after them repeats the DQ's parameters.
* ConvTranspose, HardSigmoid, HardSwish, Div, Sub, Pad, Erf, LayerNormalization have no int8
  CPU kernel: they stay float.
"""

from __future__ import annotations

from dataclasses import dataclass

ANCHOR = "anchor"            # Conv / MatMul / Gemm: int8 GEMM kernels, the reason to quantize
BINARY = "binary"            # QLinearAdd / QLinearMul
VARIADIC = "variadic"        # QLinearConcat
UNARY = "unary"              # QLinearAveragePool / QLinearGlobalAveragePool / QLinearSigmoid / ...
PASSTHROUGH = "passthrough"  # runs on uint8 as is; Q after must repeat the DQ's parameters


@dataclass(frozen=True)
class OpRule:
    kind: str
    data_inputs: tuple[int, ...] | None   # activation inputs that take a DQ; None = all inputs
    output_q_required: bool = True
    min_since: int = 1                    # ORT matches some ops only from this since_version


RULES: dict[str, OpRule] = {
    "Conv": OpRule(ANCHOR, (0,)),
    "MatMul": OpRule(ANCHOR, (0, 1), output_q_required=False),
    "Gemm": OpRule(ANCHOR, (0,), output_q_required=False),
    "Add": OpRule(BINARY, (0, 1)),
    "Mul": OpRule(BINARY, (0, 1)),
    "Concat": OpRule(VARIADIC, None),
    "AveragePool": OpRule(UNARY, (0,)),
    "GlobalAveragePool": OpRule(UNARY, (0,)),
    "Sigmoid": OpRule(UNARY, (0,)),
    "LeakyRelu": OpRule(UNARY, (0,)),
    "MaxPool": OpRule(PASSTHROUGH, (0,), min_since=12),
    "Resize": OpRule(PASSTHROUGH, (0,)),
    "Reshape": OpRule(PASSTHROUGH, (0,)),
    "Transpose": OpRule(PASSTHROUGH, (0,)),
    "Squeeze": OpRule(PASSTHROUGH, (0,)),
    "Unsqueeze": OpRule(PASSTHROUGH, (0,)),
    "Flatten": OpRule(PASSTHROUGH, (0,)),
    "Slice": OpRule(PASSTHROUGH, (0,)),
    "Gather": OpRule(PASSTHROUGH, (0,)),
    "Expand": OpRule(PASSTHROUGH, (0,)),
    "Tile": OpRule(PASSTHROUGH, (0,)),
}

# Activations ORT folds into the preceding int8 op when the Q after them makes them redundant.
ABSORBABLE = ("Relu", "Clip")

# The default: everything above. Softmax is left out on purpose (QLinearSoftmax exists, but the
# probabilities feed attention products or are model outputs, where 8 bits cost most).
DEFAULT_OPS = tuple(RULES)


def rule_for(op: str, opset: int, enabled: frozenset[str]) -> OpRule | None:
    rule = RULES.get(op)
    if rule is None or op not in enabled:
        return None
    if rule.min_since > 1 and opset < rule.min_since:
        return None
    return rule
