"""QDQ insertion: rewrite a float graph according to a Plan.

Every quantized tensor gets one QuantizeLinear; every int8 consumer gets its own
DequantizeLinear (ORT wants one DQ per node group). When the producer itself runs int8, the
producer writes a fresh tensor that only the Q reads, and a DQ recreates the original tensor for
float consumers and graph outputs, so names the user sees never change. Weights become int8
initializers behind a DQ (per-channel, symmetric), biases int32 at scale s_x * s_w.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .biascorr import expected_shift
from .graphutil import Namer, const_array
from .opset import QdqFlavor, ensure_domain_import
from .params import QParams, bias_min_weight_scale, bias_params, constant_params, quantize_array, weight_params
from .plan import Plan, Unit


@dataclass
class EmitStats:
    quantized_nodes: int = 0
    quantize_ops: int = 0
    dequantize_ops: int = 0
    weights_quantized: int = 0
    bias_values_clipped: int = 0
    biases_corrected: int = 0
    quantized_names: dict = None   # float tensor name -> name of its 8-bit tensor


class _Emitter:
    def __init__(self, graph: gs.Graph, plan: Plan, flavor: QdqFlavor, pow2: bool, reduce_range: bool,
                 means: dict[str, np.ndarray] | None = None):
        self.means = means or {}
        self.graph = graph
        self.plan = plan
        self.flavor = flavor
        self.pow2 = pow2
        self.reduce_range = reduce_range
        self.namer = Namer(graph)
        self.stats = EmitStats()
        self.scalars: dict[tuple, gs.Constant] = {}
        self.quantized: dict[str, gs.Variable] = {}    # tensor name -> its uint8 tensor
        self.new_nodes: list[gs.Node] = []

    # -- helpers ---------------------------------------------------------------------------
    def _node(self, op, inputs, outputs, attrs=None, name=""):
        node = gs.Node(op, self.namer(name) if name else "", attrs or {}, inputs=inputs, outputs=outputs,
                       domain=self.flavor.domain or None)
        self.new_nodes.append(node)
        return node

    def _scale_zp(self, p: QParams):
        key = (p.scale, p.zero_point, p.dtype)
        if key not in self.scalars:
            s = gs.Constant(self.namer("qs"), np.array(p.scale, np.float32))
            z = gs.Constant(self.namer("qz"), np.array(p.zero_point, p.np_dtype()))
            self.scalars[key] = (s, z)
        return self.scalars[key]

    def _dq(self, source: gs.Tensor, scale, zp, base: str, axis: int | None = None, out=None) -> gs.Tensor:
        out = out if out is not None else gs.Variable(self.namer(f"{base}_dq"), dtype=np.float32)
        inputs = [source, scale] + ([zp] if zp is not None else [])
        self._node("DequantizeLinear", inputs, [out], {"axis": axis} if axis is not None else None,
                   name="")
        self.stats.dequantize_ops += 1
        return out

    # -- activations -----------------------------------------------------------------------
    def quantize_tensor(self, t: gs.Variable, p: QParams, int8_producer: bool) -> gs.Variable:
        if t.name in self.quantized:
            return self.quantized[t.name]
        scale, zp = self._scale_zp(p)
        q = gs.Variable(self.namer(f"{t.name}_q"), dtype=p.np_dtype())
        if int8_producer:
            prod = t.inputs[0]
            pre = gs.Variable(self.namer(f"{t.name}_f"), dtype=np.float32, shape=t.shape)
            idx = next(i for i, o in enumerate(prod.outputs) if o is t)
            prod.outputs[idx] = pre
            self._node("QuantizeLinear", [pre, scale, zp], [q], name="")
            users = [u for u in t.outputs if u.name not in self.plan.units]
            if users or any(o is t for o in self.graph.outputs):
                self._dq(q, scale, zp, t.name, out=t)
        else:
            self._node("QuantizeLinear", [t, scale, zp], [q], name="")
        self.stats.quantize_ops += 1
        self.quantized[t.name] = q
        return q

    def dq_for(self, t_name: str) -> gs.Tensor:
        p = self.plan.params[t_name]
        scale, zp = self._scale_zp(p)
        return self._dq(self.quantized[t_name], scale, zp, t_name)

    # -- constants -------------------------------------------------------------------------
    def weight(self, node: gs.Node, index: int, axis: int | None, min_scale=None, source: str = ""):
        """Quantize the weight; returns (scales, expected output shift per channel or None)."""
        w = const_array(node.inputs[index]).astype(np.float32)
        q, scales = weight_params(w, axis, pow2=self.pow2, reduce_range=self.reduce_range, min_scale=min_scale)
        shift = None
        if index == 1 and axis is not None and self.means:
            shaped = scales.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
            shift = expected_shift(node, w, q.astype(np.float32) * shaped, self.means.get(source))
        base = node.inputs[index].name or f"{node.name}_W"
        wq = gs.Constant(self.namer(f"{base}_q"), q)
        ws = gs.Constant(self.namer(f"{base}_s"), scales if axis is not None else np.array(scales, np.float32))
        wz = gs.Constant(self.namer(f"{base}_zp"), np.zeros(scales.shape, np.int8))
        node.inputs[index] = self._dq(wq, ws, wz, base, axis=axis if axis is not None and scales.ndim else None)
        self.stats.weights_quantized += 1
        return scales, shift

    def bias(self, node: gs.Node, index: int, in_scale: float, w_scales: np.ndarray, beta: float = 1.0,
             shift: np.ndarray | None = None) -> None:
        b = const_array(node.inputs[index]).astype(np.float32) * np.float32(beta)
        if shift is not None and shift.size == b.size:
            b = (b - shift.reshape(b.shape)).astype(np.float32)
            self.stats.biases_corrected += 1
        shape = b.shape
        flat = b.reshape(-1)
        n = flat.size
        ws = np.broadcast_to(np.asarray(w_scales, np.float32).reshape(-1), (n,)) if np.ndim(w_scales) else np.full(n, float(w_scales), np.float32)
        q, scale, clipped = bias_params(flat, in_scale, ws)
        self.stats.bias_values_clipped += clipped
        base = node.inputs[index].name or f"{node.name}_B"
        bq = gs.Constant(self.namer(f"{base}_q"), q.reshape(shape))
        per_axis = n > 1 and len(shape) == 1
        if per_axis:
            bs = gs.Constant(self.namer(f"{base}_s"), scale)
            node.inputs[index] = self._dq(bq, bs, None, base, axis=0)
        elif n == 1 or np.allclose(scale, scale[0]):
            bs = gs.Constant(self.namer(f"{base}_s"), np.array(scale[0], np.float32))
            node.inputs[index] = self._dq(bq, bs, None, base)
        else:  # a 2-D [1, N] bias: flatten it so the DQ can be per-axis
            bq = gs.Constant(bq.name, q)
            bs = gs.Constant(self.namer(f"{base}_s"), scale)
            node.inputs[index] = self._dq(bq, bs, None, base, axis=0)

    def const_operand(self, node: gs.Node, index: int, dtype: str) -> None:
        value = const_array(node.inputs[index]).astype(np.float32)
        p = constant_params(value, dtype, pow2=self.pow2)
        base = node.inputs[index].name or f"{node.name}_C"
        cq = gs.Constant(self.namer(f"{base}_q"), quantize_array(value, p))
        scale, zp = self._scale_zp(p)
        node.inputs[index] = self._dq(cq, scale, zp, base)


def emit(graph: gs.Graph, plan: Plan, flavor: QdqFlavor, *, pow2: bool = False,
         reduce_range: bool = False, activation_dtype: str = "uint8",
         means: dict[str, np.ndarray] | None = None) -> EmitStats:
    """Insert Q/DQ for ``plan`` into ``graph`` (in place); ``means`` (per-channel input means by
    tensor name) turn on bias correction."""
    em = _Emitter(graph, plan, flavor, pow2, reduce_range, means)
    units = plan.units
    # 1. quantize every planned tensor once (in topological order of producers)
    for node in list(graph.nodes):
        unit = units.get(node.name)
        for i, t in enumerate(node.inputs):
            if unit is not None and i in unit.cand.data_inputs and t.name in plan.params:
                em.quantize_tensor(t, plan.params[t.name], _int8_produced(t, units))
        if unit is not None and unit.quantize_output:
            em.quantize_tensor(unit.out, plan.params[unit.out.name], True)
    # 2. rewire int8 consumers through their own DQ; weights, biases and constant operands
    for node in list(graph.nodes):
        unit = units.get(node.name)
        if unit is None:
            continue
        em.stats.quantized_nodes += 1
        cand = unit.cand
        in_scale = None
        source = node.inputs[0].name           # before the DQ rewiring: where the means are keyed
        for i in cand.data_inputs:
            name = node.inputs[i].name
            if name not in em.quantized:
                # the tensor was renamed: its producer is int8 and writes <name>_float
                raise AssertionError(f"tensor {name} has no quantized form")
            node.inputs[i] = em.dq_for(name)
            if in_scale is None:
                in_scale = plan.params[name].scale
        for i in cand.const_inputs:
            em.const_operand(node, i, activation_dtype)
        if cand.weight is not None:
            idx, axis = cand.weight
            if cand.bias is None and node.op in ("Conv", "Gemm") and em.means.get(source) is not None:
                cand.bias = _add_zero_bias(node, em.namer)
            min_scale = _bias_floor(node, cand, in_scale)
            w_scales, shift = em.weight(node, idx, axis, min_scale if axis is not None else None, source)
            if cand.bias is not None:
                beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
                em.bias(node, cand.bias, in_scale, w_scales, beta, shift)
                if node.op == "Gemm":
                    node.attrs["beta"] = 1.0
            elif cand.bias_add is not None:
                add = cand.bias_add
                j = 1 if add.inputs[0] is node.outputs[0] else 0
                em.bias(add, j, in_scale, w_scales, 1.0, shift)
    graph.nodes.extend(em.new_nodes)
    em.stats.quantized_names = {k: v.name for k, v in em.quantized.items()}
    if flavor.domain:
        ensure_domain_import(graph, flavor.domain)
    graph.toposort()
    return em.stats


def _add_zero_bias(node: gs.Node, namer) -> int:
    """Give a bias-less Conv/Gemm a zero bias, so bias correction has somewhere to go."""
    w = const_array(node.inputs[1])
    n = w.shape[0] if node.op == "Conv" or node.attrs.get("transB", 0) else w.shape[1]
    while len(node.inputs) < 2:
        node.inputs.append(gs.Variable(""))
    bias = gs.Constant(namer(f"{node.name}_bias"), np.zeros(n, np.float32))
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)
    return 2


def _bias_floor(node: gs.Node, cand, in_scale: float | None):
    """Per-channel weight-scale floor that keeps the (future) int32 bias in range."""
    if in_scale is None:
        return None
    if cand.bias is not None:
        b = const_array(node.inputs[cand.bias])
        beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    elif cand.bias_add is not None:
        add = cand.bias_add
        b = const_array(add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0])
        beta = 1.0
    else:
        return None
    if b is None:
        return None
    b = np.asarray(b, np.float64).reshape(-1) * beta
    return bias_min_weight_scale(b, in_scale) if b.size > 1 else None


def _int8_produced(t: gs.Tensor, units: dict[str, Unit]) -> bool:
    """Is ``t`` the output of an int8 unit (which then must feed only its Q)?"""
    if len(t.inputs) != 1:
        return False
    p = t.inputs[0]
    unit = units.get(p.name)
    if unit is not None:
        return unit.quantize_output and unit.out is t
    for u in units.values():
        if u.absorbed and u.out is t:
            return True
    return False
