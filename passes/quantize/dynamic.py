"""Dynamic quantization: MatMul/Gemm weights int8 per column, activations quantized at run time.

Emits the standard-op pattern ORT fuses into DynamicQuantizeMatMul:
  DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast -> Mul(x_scale * W_scale)
One DynamicQuantizeLinear serves every MatMul reading the same activation (Q, K and V
projections). Good for transformers, whose time is in these MatMuls; on CNNs ORT's dynamic
kernels are several times slower than float, so Conv stays float here. No calibration needed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext, PassResult

from .embedding import quantize_embeddings
from .graphutil import Namer, const_array, is_float_var
from .params import weight_params
from .prepare import prepare


def quantize_dynamic(graph: gs.Graph, ctx: PassContext, o) -> PassResult:
    stats: dict = {"mode": "dynamic"}
    prepared = prepare(graph, ctx)
    if prepared:
        stats["prepared"] = prepared
    if ctx.opset < 10:
        stats["skipped"] = "MatMulInteger needs opset 10"
        return PassResult(bool(prepared), stats)
    namer = Namer(graph)
    dql: dict[str, tuple] = {}
    done = 0
    for node in list(graph.nodes):
        if node.name in o.exclude or node.op in o.exclude:
            continue
        target = _target(node)
        if target is None:
            continue
        w, bias, alpha, beta = target
        x = node.inputs[0]
        if x.name not in dql:
            xq = gs.Variable(namer(f"{x.name}_quantized"), dtype=np.uint8)
            xs = gs.Variable(namer(f"{x.name}_scale"), dtype=np.float32)
            xz = gs.Variable(namer(f"{x.name}_zero_point"), dtype=np.uint8)
            graph.nodes.append(gs.Node("DynamicQuantizeLinear", namer(f"{x.name}_DynamicQuantizeLinear"),
                                       inputs=[x], outputs=[xq, xs, xz]))
            dql[x.name] = (xq, xs, xz)
        xq, xs, xz = dql[x.name]
        q, scales = weight_params(w, 1, reduce_range=o.reduce_range)
        base = node.name
        acc = gs.Variable(namer(f"{base}_int32"), dtype=np.int32)
        accf = gs.Variable(namer(f"{base}_int32_float"), dtype=np.float32)
        scale = gs.Variable(namer(f"{base}_scale"), dtype=np.float32)
        out = node.outputs[0]
        wq = gs.Constant(namer(f"{base}_W_quantized"), q)
        wz = gs.Constant(namer(f"{base}_W_zero_point"), np.zeros(q.shape[1], np.int8))
        ws = gs.Constant(namer(f"{base}_W_scale"), (scales * np.float32(alpha)).astype(np.float32))
        new = [gs.Node("MatMulInteger", namer(f"{base}_MatMulInteger"), inputs=[xq, wq, xz, wz], outputs=[acc]),
               gs.Node("Cast", namer(f"{base}_Cast"), {"to": 1}, inputs=[acc], outputs=[accf]),
               gs.Node("Mul", namer(f"{base}_scale_product"), inputs=[xs, ws], outputs=[scale])]
        node.outputs.clear()
        node.inputs.clear()
        if bias is None:
            new.append(gs.Node("Mul", namer(f"{base}_dequantize"), inputs=[accf, scale], outputs=[out]))
        else:
            mid = gs.Variable(namer(f"{base}_unbiased"), dtype=np.float32)
            new.append(gs.Node("Mul", namer(f"{base}_dequantize"), inputs=[accf, scale], outputs=[mid]))
            new.append(gs.Node("Add", namer(f"{base}_bias"), inputs=[mid, gs.Constant(namer(f"{base}_B"), (bias * np.float32(beta)).astype(np.float32))], outputs=[out]))
        graph.nodes.extend(new)
        done += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    tables = quantize_embeddings(graph) if o.embeddings else 0
    graph.toposort()
    stats.update(matmuls_int8=done, embedding_tables_int8=tables)
    return PassResult(bool(prepared) or done > 0 or tables > 0, stats)


def _target(node: gs.Node):
    """(weight [K,N], bias or None, alpha, beta) for a MatMul/Gemm with a constant 2-D weight."""
    if node.op == "MatMul" and len(node.inputs) == 2 and is_float_var(node.inputs[0]):
        w = const_array(node.inputs[1])
        if w is not None and w.dtype == np.float32 and w.ndim == 2:
            return w, None, 1.0, 1.0
    if node.op == "Gemm" and is_float_var(node.inputs[0]) and not node.attrs.get("transA", 0):
        w = const_array(node.inputs[1])
        if w is None or w.dtype != np.float32 or w.ndim != 2:
            return None
        if node.attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = const_array(node.inputs[2])
            if bias is None:
                return None
        return w, bias, float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    return None
