"""Accuracy-aware selection: keep the most sensitive anchors float until the target is met.

Sensitivity of an anchor = how far the model output moves when only that anchor (and the ops
it pulls into int8) is quantized. Anchors are then reverted to float in order of sensitivity;
the smallest number of reverts that meets the target is found by bisection (the score is
close to monotone in that number), so the cost is N + log2(N) evaluations, and only when the
fully quantized model misses the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from .evaluate import Evaluator, Score


@dataclass
class Selection:
    anchors: set[str]
    score: Score
    full_score: Score
    sensitivity: dict[str, float] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)
    evaluations: int = 0


def select(anchors: list[str], build: Callable[[set[str]], onnx.ModelProto], evaluator: Evaluator,
           target: float, progress=None, sensitivity_evaluator: Evaluator | None = None,
           full: Score | None = None) -> Selection:
    """``full``: the score with every anchor int8, when the caller already has it."""
    if full is None:
        full = evaluator.score(build(set(anchors)))
    if full.value >= target or not anchors:
        return Selection(set(anchors), full, full, evaluations=1)
    probe = sensitivity_evaluator or evaluator
    sens: dict[str, float] = {}
    for k, name in enumerate(anchors):
        sens[name] = 1.0 - probe.score(build({name})).value
        if progress is not None:
            progress("sensitivity", k + 1, len(anchors))
    order = sorted(anchors, key=lambda a: -sens[a])
    lo, hi = 1, len(order)
    best: tuple[int, Score] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        s = evaluator.score(build(set(order[mid:])))
        if s.value >= target:
            best, hi = (mid, s), mid - 1
        else:
            lo = mid + 1
    if best is None:  # even one int8 anchor breaks the target: keep the model float
        return Selection(set(), evaluator.score(build(set())), full, sens, list(order), evaluator.evaluations)
    k, s = best
    return Selection(set(order[k:]), s, full, sens, order[:k], evaluator.evaluations)
