"""MatMul + Add -> Gemm where that is legal: A of rank 2, B a rank-2 constant, and a constant
bias that broadcasts to [M, N] without enlarging the result. (Gemm is rank 2 only; for higher
ranks ORT fuses MatMul+Add itself, and spelling it as Reshape/Gemm/Reshape adds nodes.)"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.pass_base import PassContext
from onnxopt.rewrite import RewriteRule

from .util import const, feeds_only, is_std, producer, rank

GEMM_TYPES = (np.float16, np.float32, np.float64)


def _match(add: gs.Node, ctx: PassContext):
    if not is_std(add, "Add") or len(add.inputs) != 2:
        return None
    for i in (0, 1):
        mm_out, bias = add.inputs[i], add.inputs[1 - i]
        mm = producer(mm_out)
        if not is_std(mm, "MatMul") or not feeds_only(mm_out, add, ctx):
            continue
        a, b = mm.inputs
        bv, cv = const(b), const(bias)
        if bv is None or cv is None or bv.ndim != 2 or rank(a) != 2 or bv.dtype.type not in GEMM_TYPES:
            continue
        if cv.dtype != bv.dtype or cv.ndim > 2:
            continue
        n = bv.shape[1]
        full = (1,) * (2 - cv.ndim) + cv.shape
        if full[1] not in (1, n):
            continue
        m_dim = a.shape[0]
        if full[0] != 1 and not (isinstance(m_dim, int) and full[0] == m_dim):
            continue
        return a, b, bias, mm
    return None


def _rewrite(rw, add: gs.Node, m) -> None:
    a, b, bias, mm = m
    out = add.outputs[0]
    rw.remove_node(add)
    rw.remove_node(mm)
    rw.add_node("Gemm", [a, b, bias], [out], name=mm.name)


def rules() -> list[RewriteRule]:
    return [RewriteRule("matmul_add_to_gemm", "Add", _match, _rewrite, benefit=2, opsets=(7, 10_000))]
