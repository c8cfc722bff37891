"""int8 storage for weights that stay float: Cast(int8) * per-channel scale; float16 storage
(Cast) for the weights too sensitive for 8 bits.

A DequantizeLinear in front of a float Conv would run every inference (ORT never constant-folds
DQ, to keep QDQ groups intact) and would also stop ORT from pre-packing the weight. Cast and Mul
on initializers, on the other hand, ORT folds once at session load: the file holds int8, the
kernel sees a constant float weight, and the float speed is untouched. Used for every anchor the
latency guard or the accuracy selection keeps float, and for ConvTranspose (no int8 kernel).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .biascorr import expected_shift
from .graphutil import Namer, const_array
from .params import weight_params

MIN_ELEMENTS = 256    # below this the scales and the two nodes cost more than they save


def weight_axis(node: gs.Node) -> int | None:
    """The output-channel axis of a node's weight input (index 1)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul":
        return 1
    return None


def _correct_bias(node: gs.Node, shift: np.ndarray, namer: Namer) -> None:
    if node.op == "Conv":
        slot = 2
    elif node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) == 1.0:
        slot = 2
    else:
        return  # MatMul: no bias input to adjust
    if len(node.inputs) > slot and node.inputs[slot].name:
        b = const_array(node.inputs[slot])
        if b is None or b.size != shift.size:
            return
        node.inputs[slot] = gs.Constant(namer(f"{node.inputs[slot].name}_corrected"),
                                        (b.astype(np.float32) - shift.reshape(b.shape)).astype(np.float32))
    else:
        while len(node.inputs) < slot:
            node.inputs.append(gs.Variable(""))
        node.inputs.append(gs.Constant(namer(f"{node.name}_bias_corrected"), -shift))


def compress_weights(graph: gs.Graph, nodes: list[gs.Node], *, reduce_range: bool = False,
                     means: dict[str, np.ndarray] | None = None) -> int:
    """int8 storage for ``nodes``' weights; with ``means``, the float bias absorbs the expected
    output shift of the rounding (bias correction)."""
    namer = Namer(graph)
    done = 0
    for node in nodes:
        axis = weight_axis(node)
        if axis is None or len(node.inputs) < 2:
            continue
        w = const_array(node.inputs[1])
        if w is None or w.dtype != np.float32 or w.size < MIN_ELEMENTS or w.ndim < 2:
            continue
        q, scale = weight_params(w, axis, reduce_range=reduce_range)
        shape = [1] * w.ndim
        shape[axis] = -1
        if means:
            shift = expected_shift(node, w, q.astype(np.float32) * scale.reshape(shape), means.get(node.inputs[0].name))
            if shift is not None:
                _correct_bias(node, shift.astype(np.float32), namer)
        base = node.inputs[1].name or f"{node.name}_W"
        stored = gs.Constant(namer(f"{base}_i8"), q)
        scales = gs.Constant(namer(f"{base}_s"), scale.reshape(shape))
        cast = gs.Variable(namer(f"{base}_c"), dtype=np.float32)
        restored = gs.Variable(namer(f"{base}_w"), dtype=np.float32)
        graph.nodes.append(gs.Node("Cast", "", {"to": 1}, inputs=[stored], outputs=[cast]))
        graph.nodes.append(gs.Node("Mul", "", inputs=[cast, scales], outputs=[restored]))
        node.inputs[1] = restored
        done += 1
    if done:
        graph.toposort()
    return done


def store_half(graph: gs.Graph, nodes: list[gs.Node]) -> int:
    """float16 storage for ``nodes``' weights: half the bytes at ~5e-4 relative rounding (the
    caller checks the result against its target); skipped where float16 would overflow."""
    namer = Namer(graph)
    done = 0
    for node in nodes:
        if weight_axis(node) is None or len(node.inputs) < 2:
            continue
        w = const_array(node.inputs[1])
        if w is None or w.dtype != np.float32 or w.size < MIN_ELEMENTS or w.ndim < 2:
            continue
        half = w.astype(np.float16)
        if not np.all(np.isfinite(half)):
            continue
        base = node.inputs[1].name or f"{node.name}_W"
        restored = gs.Variable(namer(f"{base}_w"), dtype=np.float32)
        graph.nodes.append(gs.Node("Cast", "", {"to": 1}, inputs=[gs.Constant(namer(f"{base}_f16"), half)],
                                   outputs=[restored]))
        node.inputs[1] = restored
        done += 1
    if done:
        graph.toposort()
    return done
