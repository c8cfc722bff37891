"""The quantization plan: which nodes run int8 and which tensors carry which parameters.

Two steps. ``find_candidates`` looks at the float graph once: which nodes ORT could run int8
(ops.RULES), with constant weights and calibrated, finite ranges on every tensor that would be
quantized. ``make_plan`` then takes the anchors (Conv/MatMul/Gemm) chosen by the caller and

* absorbs a following Relu/Clip into the anchor's Q (ORT drops it), and a MatMul's bias Add
  (ORT turns MatMul + Add(int32 bias) into QGemm);
* grows the int8 region over the non-anchor ops only where that removes Q/DQ work, weighed
  by the elements converted where calibration saw the shapes (an Add between two int8 convs:
  yes; a lone Concat of float tensors: no; a GlobalAveragePool after an int8 conv: yes, its
  DQ then converts C values instead of C x H x W);
* decides, per tensor, where a Q goes and with which parameters (pass-through ops repeat
  their input's parameters, which ORT requires to drop their Q/DQ).

Only the top-level graph is planned: subgraph bodies (If/Loop/Scan) stay float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from . import ops
from .graphutil import const_array, is_float_var, is_output
from .params import QParams, activation_params, makes_redundant


@dataclass(frozen=True)
class Settings:
    activation_dtype: str = "uint8"
    pow2: bool = False
    enabled_ops: frozenset = frozenset(ops.DEFAULT_OPS)
    opset: int = 13


@dataclass
class Candidate:
    """A node that could run int8, and how."""

    node: gs.Node
    rule: ops.OpRule
    data_inputs: list[int]                       # activation inputs (DQ'd)
    const_inputs: list[int] = field(default_factory=list)   # float constants quantized like activations
    weight: tuple[int, int | None] | None = None            # (input index, per-channel axis)
    bias: int | None = None                                 # input index of a Conv/Gemm bias
    bias_add: gs.Node | None = None                         # MatMul's following Add(bias)
    act: gs.Node | None = None                              # following Relu/Clip that may be absorbed
    act_bounds: tuple[float | None, float | None] = (None, None)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def is_anchor(self) -> bool:
        return self.rule.kind == ops.ANCHOR

    def core_output(self) -> gs.Tensor:
        return (self.bias_add or self.node).outputs[0]


@dataclass
class Unit:
    cand: Candidate
    out: gs.Tensor             # the tensor that leaves the unit (after absorbed act / bias)
    absorbed: bool
    quantize_output: bool


@dataclass
class Plan:
    units: dict[str, Unit] = field(default_factory=dict)
    params: dict[str, QParams] = field(default_factory=dict)    # tensor name -> activation params

    def anchors(self) -> list[str]:
        return [n for n, u in self.units.items() if u.cand.is_anchor]


# ---------------------------------------------------------------------------------------------
# candidates


def find_candidates(graph: gs.Graph, ranges: dict[str, tuple[float, float]], settings: Settings) -> dict[str, Candidate]:
    found: dict[str, Candidate] = {}
    for node in graph.nodes:
        rule = ops.rule_for(node.op, settings.opset, settings.enabled_ops)
        if rule is None or (node.domain or "") not in ("", "ai.onnx") or not node.outputs:
            continue
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        cand = _candidate(graph, node, rule, ranges)
        if cand is not None:
            found[node.name] = cand
    return found


def _usable(t: gs.Tensor, ranges) -> bool:
    return is_float_var(t) and t.name in ranges


def _candidate(graph, node: gs.Node, rule: ops.OpRule, ranges) -> Candidate | None:
    out = node.outputs[0]
    if len(node.outputs) != 1 and node.op != "MaxPool":
        return None
    if node.op == "MaxPool" and len(node.outputs) > 1 and any(o.name for o in node.outputs[1:]):
        return None
    if not is_float_var(out):
        return None
    ins = node.inputs
    if rule.kind == ops.ANCHOR:
        return _anchor(graph, node, rule, ranges)
    indices = list(range(len(ins))) if rule.data_inputs is None else list(rule.data_inputs)
    data, consts = [], []
    for i in indices:
        if i >= len(ins):
            return None
        value = const_array(ins[i])
        if value is not None:
            if rule.kind in (ops.BINARY, ops.VARIADIC) and value.dtype == np.float32:
                consts.append(i)
                continue
            return None
        if not _usable(ins[i], ranges):
            return None
        data.append(i)
    if not data:
        return None
    if rule.kind != ops.PASSTHROUGH and out.name not in ranges:
        return None
    cand = Candidate(node, rule, data, consts)
    if rule.kind in (ops.BINARY, ops.VARIADIC, ops.UNARY):
        _find_act(graph, cand, ranges)
    return cand


def _anchor(graph, node: gs.Node, rule, ranges) -> Candidate | None:
    ins = node.inputs
    if node.op == "Conv":
        w = const_array(ins[1]) if len(ins) > 1 else None
        if w is None or w.dtype != np.float32 or w.ndim != 4 or not _usable(ins[0], ranges):
            return None
        bias = None
        if len(ins) > 2 and ins[2].name:
            b = const_array(ins[2])
            if b is None or b.shape != (w.shape[0],):
                return None
            bias = 2
        cand = Candidate(node, rule, [0], weight=(1, 0), bias=bias)
    elif node.op == "Gemm":
        w = const_array(ins[1]) if len(ins) > 1 else None
        if w is None or w.dtype != np.float32 or w.ndim != 2 or not _usable(ins[0], ranges):
            return None
        n = w.shape[0] if node.attrs.get("transB", 0) else w.shape[1]
        bias = None
        if len(ins) > 2 and ins[2].name:
            b = const_array(ins[2])
            if b is None or b.size not in (1, n) or (b.ndim > 1 and b.shape[-1] != b.size):
                return None
            bias = 2
        cand = Candidate(node, rule, [0], weight=(1, 0 if node.attrs.get("transB", 0) else 1), bias=bias)
    else:  # MatMul
        a, b = (const_array(t) for t in ins[:2])
        if a is not None and b is not None:
            return None
        data, weight = [], None
        for i, value in enumerate((a, b)):
            if value is None:
                if not _usable(ins[i], ranges):
                    return None
                data.append(i)
            elif value.dtype != np.float32:
                return None
            else:
                weight = (i, 1 if (i == 1 and value.ndim == 2) else None)
        cand = Candidate(node, rule, data, weight=weight)
        if weight == (1, 1) and _static_shape(ins[0]):
            # ORT turns MatMul + Add(int32 DQ bias) into QGemm only when it can reshape to 2-D,
            # i.e. with a static shape; with symbolic dims MatMulIntegerToFloat + a float Add
            # is faster than dequantizing the bias every run, so the bias stays float there.
            cand.bias_add = _bias_add(graph, node, b.shape[1])
    _find_act(graph, cand, ranges)
    return cand


def _static_shape(t: gs.Tensor) -> bool:
    shape = getattr(t, "shape", None)
    return shape is not None and (len(shape) == 2 or all(isinstance(d, int) and d > 0 for d in shape))


def _bias_add(graph, node: gs.Node, n: int) -> gs.Node | None:
    out = node.outputs[0]
    if len(out.outputs) != 1 or is_output(graph, out):
        return None
    add = out.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    value = const_array(other)
    if value is None or value.dtype != np.float32 or value.size != n or value.shape[-1] != n:
        return None
    if not is_float_var(add.outputs[0]):
        return None
    return add


def _find_act(graph, cand: Candidate, ranges) -> None:
    out = cand.core_output()
    if len(out.outputs) != 1 or is_output(graph, out):
        return
    act = out.outputs[0]
    if act.op not in ops.ABSORBABLE or not act.outputs or not _usable(act.outputs[0], ranges):
        return
    if act.op == "Clip":
        lo = hi = None
        if "min" in act.attrs or "max" in act.attrs:  # opset < 11
            lo, hi = act.attrs.get("min"), act.attrs.get("max")
        else:
            for k, slot in ((1, "lo"), (2, "hi")):
                if len(act.inputs) > k and act.inputs[k].name:
                    v = const_array(act.inputs[k])
                    if v is None or v.size != 1:
                        return
                    if slot == "lo":
                        lo = float(v.reshape(-1)[0])
                    else:
                        hi = float(v.reshape(-1)[0])
        cand.act_bounds = (lo, hi)
    else:
        cand.act_bounds = (0.0, None)
    cand.act = act


# ---------------------------------------------------------------------------------------------
# plans


def make_plan(graph: gs.Graph, cands: dict[str, Candidate], anchors: set[str] | None,
              ranges: dict[str, tuple[float, float]], settings: Settings, *, grow: bool = True,
              sizes: dict[str, int] | None = None, growable: frozenset = frozenset()) -> Plan:
    """Units for the chosen anchors (None: every candidate anchor), grown over non-anchors.
    ``sizes``: element counts of tensors (from calibration) that weigh each Q/DQ conversion.
    ``growable``: anchors not worth int8 on their own (tiny products) that may still join the
    region like a non-anchor, where their neighbours are int8 and joining converts fewer values
    (a classifier's 2048x10 head after an int8 pooling: ORT's QGemm, no DQ of its input)."""
    chosen = {n for n, c in cands.items() if c.is_anchor and (anchors is None or n in anchors)}
    absorbed = {cands[n].bias_add.name for n in chosen if cands[n].bias_add is not None}
    chosen -= absorbed
    if grow:
        joinable = {n for n in growable if n in cands and n not in chosen and cands[n].bias_add is None}
        chosen |= _grow(graph, cands, chosen, absorbed, _conversion_cost(sizes or {}), joinable)
    plan = Plan()
    for node in graph.nodes:  # topological order: pass-through parameters flow forward
        if node.name not in chosen:
            continue
        cand = cands[node.name]
        core = cand.core_output()
        out_consumers_int8 = all(c.name in chosen for c in core.outputs) and not is_output(graph, core)
        quantize_output = cand.rule.output_q_required or (core.outputs and out_consumers_int8)
        unit = Unit(cand, core, False, bool(quantize_output))
        if cand.act is not None and unit.quantize_output:
            act_out = cand.act.outputs[0]
            p = _act_params(act_out, ranges, settings, cand.act_bounds)
            if makes_redundant(p, cand.act.op, *cand.act_bounds):
                unit.out, unit.absorbed = act_out, True
                plan.params[act_out.name] = p
        plan.units[node.name] = unit
    for node in graph.nodes:
        unit = plan.units.get(node.name)
        if unit is None:
            continue
        for i in unit.cand.data_inputs:
            t = node.inputs[i]
            if t.name not in plan.params:
                plan.params[t.name] = _params(t, ranges, settings)
        if unit.quantize_output and unit.out.name not in plan.params:
            if unit.cand.rule.kind == ops.PASSTHROUGH:
                plan.params[unit.out.name] = plan.params[node.inputs[unit.cand.data_inputs[0]].name]
            else:
                plan.params[unit.out.name] = _params(unit.out, ranges, settings)
    return plan


def _params(t: gs.Tensor, ranges, settings: Settings) -> QParams:
    lo, hi = ranges[t.name]
    return activation_params(lo, hi, settings.activation_dtype, pow2=settings.pow2)


def _act_params(t: gs.Tensor, ranges, settings: Settings, bounds) -> QParams:
    lo, hi = ranges[t.name]
    b_lo, b_hi = bounds
    if b_lo is not None:
        lo = max(lo, b_lo)
    if b_hi is not None:
        hi = min(hi, b_hi)
    return activation_params(lo, hi, settings.activation_dtype, pow2=settings.pow2)


def _conversion_cost(sizes: dict[str, int]):
    """What converting a tensor (Q or DQ) costs: its element count; a tensor of unknown size
    counts as a typical one (the median known size), so unknown shapes neither dominate nor
    vanish. With no sizes at all every conversion costs 1."""
    typical = float(np.median(list(sizes.values()))) if sizes else 1.0
    return lambda t: float(sizes.get(t.name, typical))


def _grow(graph, cands: dict[str, Candidate], chosen: set[str], absorbed: set[str], cost,
          joinable: set[str] = frozenset()) -> set[str]:
    """Non-anchor nodes (and the ``joinable`` anchors) worth running int8: those whose int8
    form converts fewer elements between float and int8 than their float form, given the nodes
    already int8 (``cost`` weighs one conversion of a tensor). Monotone, so it terminates.
    ``absorbed`` (bias Adds folded into their MatMul) count as int8 producers, never as units."""
    grown: set[str] = set()
    ties: set[str] = set()  # pass-throughs that joined at equal cost: they only move a DQ
    region = set(chosen) | absorbed
    others = [c for c in cands.values()
              if (not c.is_anchor or c.name in joinable) and c.name not in absorbed]
    changed = True
    while changed:
        changed = False
        for cand in others:
            if cand.name in region:
                continue
            int8, float_ = _int8_cost(graph, cand, region, cands, cost), _float_cost(graph, cand, region, cands, cost)
            # a pass-through is exact in int8 (it repeats its input's parameters), so at equal
            # cost it joins: that lets the next node see an int8 input (GAP -> Flatten -> Gemm)
            tie = int8 == float_ and cand.rule.kind == ops.PASSTHROUGH
            if int8 < float_ or tie:
                region.add(cand.name)
                grown.add(cand.name)
                if tie:
                    ties.add(cand.name)
                changed = True
    # a tie that led to no int8 consumer only moved a DQ past it: undo, until none is left
    # (undoing one can leave the tie before it leading nowhere too)
    changed = True
    while changed:
        changed = False
        for name in list(ties):
            out = cands[name].core_output()
            if is_output(graph, out) or not any(u.name in region for u in out.outputs):
                region.discard(name)
                grown.discard(name)
                ties.discard(name)
                changed = True
    return grown


def _produced_int8(t: gs.Tensor, region: set[str], cands) -> bool:
    """Will ``t`` exist in quantized form because an int8 node in the region produces it?"""
    if len(t.inputs) != 1:
        return False
    p = t.inputs[0]
    if p.name in region:
        return True
    # the output of an absorbable activation after an int8 producer
    if p.op in ops.ABSORBABLE and p.inputs and len(p.inputs[0].inputs) == 1:
        q = p.inputs[0].inputs[0]
        return q.name in region and cands[q.name].act is p
    return False


def _float_cost(graph, cand: Candidate, region, cands, weigh) -> float:
    node = cand.node
    cost = sum(weigh(node.inputs[i]) for i in cand.data_inputs
               if _produced_int8(node.inputs[i], region, cands))  # DQ needed
    out = cand.core_output()
    if out.outputs and any(u.name in region for u in out.outputs):
        cost += weigh(out)  # a Q on our float output for the int8 users
    return cost


def _int8_cost(graph, cand: Candidate, region, cands, weigh) -> float:
    node = cand.node
    cost = 0.0
    for i in cand.data_inputs:
        t = node.inputs[i]
        if not _produced_int8(t, region, cands) and not any(u.name in region for u in t.outputs if u is not node):
            cost += weigh(t)  # a new Q
    out = cand.core_output()
    if is_output(graph, out) or any(u.name not in region for u in out.outputs):
        cost += weigh(out)  # a DQ back to float
    return cost
