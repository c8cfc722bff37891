"""Facts about a model for `info` and before/after tables: counts, sizes, histogram. No I/O printing."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper

from . import ir


@dataclass
class ModelSummary:
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict]
    outputs: list[dict]
    nodes: int
    op_histogram: dict[str, int]
    initializers: int
    params: int
    weight_bytes: int
    file_bytes: int | None
    subgraphs: int
    functions: int
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _value_info(vi: onnx.ValueInfoProto) -> dict:
    t = vi.type
    if t.HasField("tensor_type"):
        tt = t.tensor_type
        dtype = helper.tensor_dtype_to_string(tt.elem_type).replace("TensorProto.", "").lower() if tt.elem_type else "?"
        shape = ([d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
                 if tt.HasField("shape") else None)
        return {"name": vi.name, "type": dtype, "shape": shape}
    return {"name": vi.name, "type": t.WhichOneof("value") or "?", "shape": None}


def _params(t: onnx.TensorProto) -> int:
    """Elements of a weight; int64 tensors hold shapes and indices, not parameters."""
    if t.data_type == onnx.TensorProto.INT64:
        return 0
    return int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1


def _walk(graph: onnx.GraphProto, hist: Counter, counts: Counter) -> None:
    for init in graph.initializer:
        counts["initializers"] += 1
        counts["params"] += _params(init)
        if external_data_helper.uses_external_data(init):
            info = external_data_helper.ExternalDataInfo(init)
            counts["weight_bytes"] += int(info.length or 0)
        else:
            counts["weight_bytes"] += init.ByteSize()
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        hist[key] += 1
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):  # weights stored as Constant nodes
                    counts["params"] += _params(attr.t)
                    counts["weight_bytes"] += attr.t.ByteSize()
        for attr in node.attribute:
            subs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subs:
                counts["subgraphs"] += 1
                _walk(sub, hist, counts)


def summarize(model: onnx.ModelProto, path: Path | None = None) -> ModelSummary:
    hist: Counter = Counter()
    counts: Counter = Counter()
    _walk(model.graph, hist, counts)
    file_bytes = None
    if path is not None and Path(path).exists():
        file_bytes = Path(path).stat().st_size
        locations = {external_data_helper.ExternalDataInfo(t).location
                     for t in ir._all_tensors(model) if external_data_helper.uses_external_data(t)}
        file_bytes += sum((Path(path).parent / loc).stat().st_size for loc in locations
                          if (Path(path).parent / loc).exists())
    initializer_names = {i.name for i in model.graph.initializer}
    return ModelSummary(
        ir_version=model.ir_version,
        opsets={(imp.domain or "ai.onnx"): imp.version for imp in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_value_info(i) for i in model.graph.input if i.name not in initializer_names],
        outputs=[_value_info(o) for o in model.graph.output],
        nodes=sum(hist.values()),
        op_histogram=dict(hist.most_common()),
        initializers=counts["initializers"],
        params=counts["params"],
        weight_bytes=counts["weight_bytes"],
        file_bytes=file_bytes,
        subgraphs=counts["subgraphs"],
        functions=len(model.functions),
        metadata={p.key: p.value for p in model.metadata_props},
    )


def serialized_size(model: onnx.ModelProto) -> int:
    """Bytes the model would take on disk (weights included), without serializing past 2 GB."""
    return model.ByteSize() if ir.weights_nbytes(model) < ir.EXTERNAL_DATA_THRESHOLD else ir.weights_nbytes(model)
