"""Never slower than fp32: what ORT's x86 CPU kernels make worth quantizing, and a measured guard.

Rules (measured with ORT 1.32 on AVX-512 VNNI, single thread, per operator):
* depthwise Conv: float NCHWc depthwise is 2-2.5x faster than QLinearConv's -> keep float;
* Conv/MatMul/Gemm with real GEMM work: QLinearConv / QGemm / MatMulIntegerToFloat are
  1.5-3x faster than float, Q/DQ themselves are cheap (~0.1 ns per element).

The guard then times the fp32 model against the candidate, interleaved, and keeps the median of
per-round time ratios (robust to machines shared with other work, which shift both runs of a
round alike). While the candidate is not faster, the anchors with the least GEMM work go back
to float; if nothing helps, the model stays float.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnxopt import validate

from .graphutil import const_array
from .plan import Candidate


def is_depthwise(cand: Candidate) -> bool:
    node = cand.node
    if node.op != "Conv":
        return False
    w = const_array(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    return group > 1 and w is not None and w.shape[1] == 1


TINY_MACS = 1 << 18  # multiply-adds: below this an int8 kernel's fixed costs exceed any saving


def macs(cand: Candidate, out_shape: tuple[int, ...] | None) -> int | None:
    """Multiply-adds of a product with a constant weight: output elements times the reduction
    length each one needs (a Gemm/MatMul row, a Conv filter); output size when no weight."""
    if out_shape is None:
        return None
    outputs = int(np.prod(out_shape))
    node = cand.node
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim < 2:
        return outputs
    if node.op in ("Conv", "ConvTranspose"):
        per_output = w.size // (w.shape[0] if node.op == "Conv" else w.shape[1] * int(node.attrs.get("group", 1)))
    elif node.op == "Gemm":
        per_output = w.shape[1] if int(node.attrs.get("transB", 0)) else w.shape[0]
    else:  # MatMul: [..., K, N]
        per_output = w.shape[-2]
    return outputs * int(per_output)


def slow_int8(cands: dict[str, Candidate], shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, str]:
    """Anchors whose int8 kernel cannot beat float on ORT's CPU EP, with the reason: depthwise
    convolutions, and tiny products such as squeeze-excitation convs on 1x1 maps (their int8
    form saves nothing and costs accuracy). A classifier's 2048x1000 Gemm is not tiny: its
    output is, but reading its weights is the cost, and int8 reads a quarter."""
    slow = {}
    for n, c in cands.items():
        if not c.is_anchor:
            continue
        if is_depthwise(c):
            slow[n] = "depthwise conv: int8 kernel slower than float on CPU"
            continue
        work = macs(c, (shapes or {}).get(c.node.outputs[0].name))
        if work is not None and work < TINY_MACS:
            slow[n] = f"tiny product ({work} multiply-adds): int8 cannot pay"
    return slow


@dataclass
class Timing:
    ratio: float                  # candidate time / fp32 time (median of per-round ratios)
    fp32_ms: float
    int8_ms: float
    rounds: int


def decided(ratios: list[float], margin: float, planned: int, min_rounds: int = 8) -> bool:
    """Is "faster than fp32?" already answered? Yes once more than half of the ``planned``
    rounds fell on one side of 1 (the median of all of them is then on that side, whatever the
    rest say), or once at least ``min_rounds`` rounds all fell on one side by more than
    ``margin`` (a clear result; one noisy round keeps it measuring)."""
    below = sum(1 for r in ratios if r < 1.0)
    if max(below, len(ratios) - below) > planned / 2:
        return True
    if len(ratios) < min_rounds:
        return False
    return max(ratios) < 1.0 - margin or min(ratios) > 1.0 + margin


def paired_ratio(base: onnx.ModelProto, cand: onnx.ModelProto, feeds: dict[str, np.ndarray], *,
                 threads: int = 1, rounds: int = 30, warmup: int = 5, budget_s: float = 20.0,
                 stop_margin: float | None = None) -> Timing:
    """Median of per-round time ratios, fp32 and candidate alternating first. ``stop_margin``:
    stop early once ``decided`` says which side of 1 the ratio is on (all the guard asks)."""
    # no spinning: two interleaved sessions' idle workers would steal each other's cores
    sessions = [validate.session(m, optimize=True, threads=threads, spinning=False) for m in (base, cand)]
    wanted = [{i.name for i in s.get_inputs()} for s in sessions]
    local = [{k: v for k, v in feeds.items() if k in w} for w in wanted]
    for _ in range(warmup):
        for s, f in zip(sessions, local):
            s.run(None, f)
    ratios, t_base, t_cand = [], [], []
    start = time.perf_counter()
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        times = [0.0, 0.0]
        for i in order:
            t0 = time.perf_counter()
            sessions[i].run(None, local[i])
            times[i] = time.perf_counter() - t0
        ratios.append(times[1] / times[0])
        t_base.append(times[0])
        t_cand.append(times[1])
        if time.perf_counter() - start > budget_s and r >= 8:
            break
        if stop_margin is not None and decided(ratios, stop_margin, rounds):
            break
    return Timing(statistics.median(ratios), statistics.median(t_base) * 1e3,
                  statistics.median(t_cand) * 1e3, len(ratios))


@dataclass
class GuardResult:
    anchors: set[str]
    timing: Timing | None
    history: list[dict] = field(default_factory=list)


def guard(base: onnx.ModelProto, build: Callable[[set[str]], onnx.ModelProto], anchors: set[str],
          rank: dict[str, float], feeds: dict[str, np.ndarray], *, threads: tuple[int, ...] = (1,),
          max_steps: int = 4, progress=None) -> GuardResult:
    """Drop the lowest-ranked anchors (least time saved) until the candidate beats fp32 at every
    thread count."""
    current = set(anchors)
    history = []
    for step in range(max_steps + 1):
        if not current:
            break
        model = build(current)
        timings = [paired_ratio(base, model, feeds, threads=t, stop_margin=0.05) for t in threads]
        worst = max(timings, key=lambda t: t.ratio)
        history.append({"anchors": len(current), "ratio": round(worst.ratio, 3),
                        "threads": [t for t in threads], "fp32_ms": round(worst.fp32_ms, 3),
                        "int8_ms": round(worst.int8_ms, 3), "rounds": [t.rounds for t in timings]})
        if progress is not None:
            progress("latency", step + 1, max_steps + 1)
        if worst.ratio < 1.0:
            return GuardResult(current, worst, history)
        if step == max_steps:
            break
        ranked = sorted(current, key=lambda a: rank.get(a, 0.0))
        current = set(ranked[len(ranked) // 2:]) if len(ranked) > 1 else set()
    return GuardResult(set(), None, history)


# ---------------------------------------------------------------------------------------------
# per-anchor micro-benchmarks: the ordering the guard drops anchors in


def island(graph, cand: Candidate, shapes: dict[str, tuple[int, ...]], header: onnx.ModelProto,
           build_int8: Callable) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]] | None:
    """The anchor (with its absorbed Relu/Clip and bias Add) alone, float and int8, and inputs of
    the shapes calibration saw. None when a shape is unknown."""
    import onnx_graphsurgeon as gs

    from onnxopt import ir

    nodes = [cand.node] + [n for n in (cand.bias_add, cand.act) if n is not None]
    inputs = [t for t in cand.node.inputs if isinstance(t, gs.Variable) and t.name]
    if any(shapes.get(t.name) is None for t in inputs):
        return None
    feeds = {}
    rng = np.random.default_rng(0)
    sub_inputs = []
    for t in inputs:
        v = gs.Variable(t.name, dtype=np.float32, shape=list(shapes[t.name]))
        sub_inputs.append(v)
        feeds[t.name] = rng.standard_normal(shapes[t.name]).astype(np.float32)
    last = nodes[-1].outputs[0]
    copies = []
    mapping = {t.name: v for t, v in zip(inputs, sub_inputs)}
    for n in nodes:
        ins = [mapping.get(t.name, t) if isinstance(t, gs.Variable) else t for t in n.inputs]
        outs = [gs.Variable(o.name, dtype=np.float32) for o in n.outputs]
        mapping.update({o.name: c for o, c in zip(n.outputs, outs)})
        copies.append(gs.Node(n.op, n.name, dict(n.attrs), inputs=ins, outputs=outs, domain=n.domain))
    sub = gs.Graph(nodes=copies, inputs=sub_inputs, outputs=[mapping[last.name]], opset=graph.opset)
    sub.import_domains = graph.import_domains
    float_model = ir.to_proto(sub, header)
    int8_model = build_int8(sub, {cand.name})
    return float_model, int8_model, feeds


def anchor_gains(graph, cands: dict[str, Candidate], names: list[str], shapes, header, build_int8,
                 threads: int = 1, progress=None) -> dict[str, float]:
    """Milliseconds each anchor saves as an int8 island (negative: it costs)."""
    gains: dict[str, float] = {}
    for k, name in enumerate(names):
        made = island(graph, cands[name], shapes, header, build_int8)
        if made is None:
            continue
        f, q, feeds = made
        try:
            t = paired_ratio(f, q, feeds, threads=threads, rounds=40, warmup=3, budget_s=2.0)
        except Exception:  # noqa: BLE001 - an island ORT cannot build just gets no estimate
            continue
        gains[name] = t.fp32_ms - t.int8_ms
        if progress is not None:
            progress("latency-probe", k + 1, len(names))
    return gains
