"""Weight-only int8 for large embedding tables (Gather from a constant float matrix).

A DQ in front of the table would dequantize the whole table every inference; instead the int8
rows are gathered first and only they are scaled: Gather(int8 table) -> Cast -> Mul(gathered
per-row scale). Standard ops, any opset; per-row symmetric scales keep ~40 dB SQNR. This is
what brings transformer models (where the word embeddings are half the weights) under a third
of their float size.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graphutil import Namer, const_array

MIN_TABLE = 1 << 16   # elements; small tables (positions, token types) are not worth it


def quantize_embeddings(graph: gs.Graph) -> int:
    namer = Namer(graph)
    done = 0
    for node in list(graph.nodes):
        if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0 or len(node.inputs) != 2:
            continue
        table = const_array(node.inputs[0])
        if table is None or table.dtype != np.float32 or table.ndim != 2 or table.size < MIN_TABLE:
            continue
        ids, out = node.inputs[1], node.outputs[0]
        bound = np.max(np.abs(table), axis=1, keepdims=True).astype(np.float32)
        scale = np.where(bound > 0, bound / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
        base = node.inputs[0].name or node.name
        rows_q = gs.Variable(namer(f"{base}_rows_quantized"), dtype=np.int8)
        rows_f = gs.Variable(namer(f"{base}_rows_float"), dtype=np.float32)
        rows_s = gs.Variable(namer(f"{base}_rows_scale"), dtype=np.float32)
        node.inputs[0] = gs.Constant(namer(f"{base}_quantized"), q)
        node.outputs[0] = rows_q
        graph.nodes.append(gs.Node("Cast", namer(f"{node.name}_cast"), {"to": 1}, inputs=[rows_q], outputs=[rows_f]))
        graph.nodes.append(gs.Node("Gather", namer(f"{node.name}_scale"), {"axis": 0},
                                   inputs=[gs.Constant(namer(f"{base}_row_scale"), scale), ids], outputs=[rows_s]))
        graph.nodes.append(gs.Node("Mul", namer(f"{node.name}_dequantize"), inputs=[rows_f, rows_s], outputs=[out]))
        done += 1
    if done:
        graph.toposort()
    return done
