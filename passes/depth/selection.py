"""Greedy block selection: remove the block whose bypass hurts the outputs least, re-measure the
rest with it removed, repeat. The first step is the exhaustive single-removal scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .sensitivity import Score


@dataclass(frozen=True)
class Step:
    """One greedy step: the block taken, the score after taking it, and every candidate's score."""

    block: int
    score: Score
    candidates: dict[int, Score]


def greedy(candidates: list[int], score: Callable[[frozenset[int]], Score], *, count: int | None = None,
           target: float | None = None,
           progress: Callable[[int, int], None] | None = None) -> list[Step]:
    """Take up to ``count`` blocks (all if None), stopping before the mean output cosine would
    fall below ``target``. ``score`` maps a set of bypassed blocks to its agreement."""
    remaining = list(candidates)
    taken: list[int] = []
    steps: list[Step] = []
    limit = len(remaining) if count is None else min(count, len(remaining))
    total = sum(len(remaining) - k for k in range(limit))
    done = 0
    while remaining and len(taken) < limit:
        scores = {}
        for b in remaining:
            scores[b] = score(frozenset(taken + [b]))
            done += 1
            if progress is not None:
                progress(done, total)
        best = max(remaining, key=lambda b: (scores[b].cosine, -b))
        if target is not None and scores[best].cosine < target:
            break
        taken.append(best)
        remaining.remove(best)
        steps.append(Step(best, scores[best], scores))
    return steps
