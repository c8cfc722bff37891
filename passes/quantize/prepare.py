"""Float-graph preparation before quantization: weights as initializers, affine ops folded into
their convolution.

Paddle exports keep weights in Constant nodes and BatchNormalization / per-channel Mul and Add
after every Conv. Quantizing such a graph as is would leave the weights float and put a
quantize/dequantize pair between every Conv and its BN. These folds are exact algebra (float
rounding aside), so the quantizer does them itself instead of depending on `fold`/`fuse`.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.passes.cleanup import lift_constants, remove_dead_nodes, remove_passthrough

from .graphutil import Namer, const_array, is_output, name_nodes


def prepare(graph: gs.Graph, ctx: PassContext) -> dict[str, int]:
    stats = {"constants_lifted": lift_constants(graph) if ctx.ir_version >= 4 else 0}
    # Identity/inference Dropout hide constants from the folds below: torch's exporter, for one,
    # writes Identity(shared initializer) for equal tensors, such as the two BatchNorm shifts of
    # a trained ResNet block (identical gradients from one residual sum keep them equal)
    stats["passthrough_removed"] = remove_passthrough(graph, ctx)
    folded = 0
    while True:
        step = _fold_once(graph)
        if not step:
            break
        folded += step
        graph.cleanup(remove_unused_graph_inputs=False)
    stats["affine_folded_into_conv"] = folded
    stats["dead_nodes_removed"] = remove_dead_nodes(graph)
    name_nodes(graph)
    graph.toposort()
    return {k: v for k, v in stats.items() if v}


def _fold_once(graph: gs.Graph) -> int:
    count = 0
    namer = Namer(graph)
    for node in list(graph.nodes):
        if node.op != "Conv" or not node.outputs:
            continue
        out = node.outputs[0]
        if len(out.outputs) != 1 or is_output(graph, out):
            continue
        weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.dtype != np.float32 or weight.ndim < 3:
            continue
        follower = out.outputs[0]
        affine = _channel_affine(follower, out, weight.shape[0], weight.ndim)
        if affine is None:
            continue
        scale, shift = affine
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if len(node.inputs) > 2 and node.inputs[2].name and bias is None:
            continue
        bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias.astype(np.float32)
        new_w = (weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.float32)
        new_b = (bias * scale + shift).astype(np.float32)
        inputs = [node.inputs[0], gs.Constant(namer(f"{node.name}_W"), new_w),
                  gs.Constant(namer(f"{node.name}_B"), new_b)]
        result = follower.outputs[0]
        node.inputs.clear()
        node.inputs.extend(inputs)
        follower.inputs.clear()
        follower.outputs.clear()
        node.outputs[0] = result
        count += 1
    return count


def _channel_affine(node: gs.Node, x: gs.Tensor, channels: int, rank: int):
    """(scale, shift) per output channel if ``node`` is an affine map of ``x`` per channel."""
    if node.op == "BatchNormalization":
        if len(node.outputs) > 1 and any(o.name for o in node.outputs[1:]) or node.attrs.get("training_mode", 0):
            return None
        if node.inputs[0] is not x:
            return None
        vals = [const_array(t) for t in node.inputs[1:5]]
        if any(v is None or v.shape != (channels,) for v in vals):
            return None
        gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
        inv = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return inv, beta - mean * inv
    if node.op not in ("Mul", "Add") or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
    if other is x:
        return None
    value = const_array(other)
    if value is None or value.dtype != np.float32:
        return None
    per_channel = _per_channel(value, channels, rank)
    if per_channel is None:
        return None
    if node.op == "Mul":
        return per_channel.astype(np.float64), np.zeros(channels)
    return np.ones(channels), per_channel.astype(np.float64)


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """Broadcast a constant that varies at most along axis 1 of a rank-``rank`` tensor to [C]."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)) if value.size == 1 else value.reshape(channels)
