"""Lossy structured pruning: rank channel groups and pick the least important share.

A group's *family* is the set of groups created by the same layers (one conv's output channels;
a residual stage's channels, shared by every conv that writes into it). Scores are compared
relative to the family's mean, so different layers' weight and activation scales do not compete
directly; ``ratio`` counts the groups already removed losslessly, and every family keeps one.

Criteria: ``l1``/``l2`` of the producing weight rows, ``bn-scale`` (|gamma| of the
BatchNormalizations the group passes; families without one are left alone), ``activation``
(sum over exits of E|x_c| times the L1 norm of the weights x_c meets: sum_j |a_j * x_j|).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .channels import ChannelAnalysis

CRITERIA = ("l1", "l2", "bn-scale", "activation")


def families(analysis: ChannelAnalysis, groups: set[int]) -> list[list[int]]:
    """Groups partitioned by the set of layers that create them (sorted, deterministic)."""
    group_of = analysis.group_of()
    makers: dict[int, set[int]] = defaultdict(set)
    for k, producer in enumerate(analysis.producers):
        for g in np.unique(group_of[producer.atoms]).tolist():
            makers[g].add(k)
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for g in sorted(groups):
        by_key[tuple(sorted(makers.get(g, ())))].append(g)
    return [members for key, members in sorted(by_key.items()) if key]


def importance(analysis: ChannelAnalysis, criterion: str,
               activations: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Score per group id (indexed by atom id; NaN where the criterion says nothing)."""
    group_of = analysis.group_of()
    score = np.zeros(group_of.size)
    seen = np.zeros(group_of.size, bool)
    if criterion in ("l1", "l2"):
        for p in analysis.producers:
            np.add.at(score, group_of[p.atoms], p.l1 if criterion == "l1" else p.l2sq)
            seen[group_of[p.atoms]] = True
        if criterion == "l2":
            score = np.sqrt(score)
    elif criterion == "bn-scale":
        for atoms, gamma in analysis.scales:
            np.add.at(score, group_of[atoms], gamma)
            seen[group_of[atoms]] = True
    elif criterion == "activation":
        if activations is None:
            raise ValueError("activation ranking needs calibration statistics")
        for ex in analysis.exits:
            stats = activations.get(ex.tensor.name)
            if stats is None:
                continue
            track = analysis.tracks[id(ex.tensor)]
            np.add.at(score, group_of[track.atoms], stats[0] * ex.weight_norm)
            seen[group_of[track.atoms]] = True
        # groups that reach no exit feed nothing: the least important of all
        seen[:] = True
    else:
        raise ValueError(f"unknown criterion '{criterion}' (one of {', '.join(CRITERIA)})")
    return np.where(seen, score, np.nan)


def select(analysis: ChannelAnalysis, ratio: float, score: np.ndarray, prunable: set[int],
           exact: set[int], allocation: str = "global", multiple: int = 1) -> set[int]:
    """The lossy groups to remove on top of ``exact``: ``ratio`` of all prunable groups.

    ``layer``: each family loses ``floor(ratio * size)``. ``global``: groups compete across
    families on importance relative to their family's mean, so a layer full of weak channels
    gives up more than one whose channels all matter. Every family keeps at least one group.
    With ``multiple`` > 1 each family's lossy share is then adjusted so the groups it keeps are
    a multiple of ``multiple`` (blocked SIMD kernels, e.g. ORT's NCHWc convolutions, need
    channel counts in multiples of 8 or 16 and fall back to much slower ones otherwise).
    """
    fams = families(analysis, prunable)
    chosen = _allocate(fams, ratio, score, exact, allocation)
    if multiple > 1:
        chosen = _round_kept(fams, chosen, score, exact, multiple)
    return chosen


def _ranked(members: list[int], score: np.ndarray, exact: set[int]) -> list[int]:
    return [g for _, g in sorted((float(score[g]), g) for g in members if g not in exact and np.isfinite(score[g]))]


def _round_kept(fams: list[list[int]], chosen: set[int], score: np.ndarray, exact: set[int], multiple: int) -> set[int]:
    out: set[int] = set()
    for members in fams:
        lossy = [g for g in members if g in chosen]
        free = len(members) - sum(g in exact for g in members)     # groups the lossy step may touch
        kept = free - len(lossy)
        if not lossy or free < multiple:
            out.update(lossy)
            continue
        target = min(max(multiple, int(round(kept / multiple)) * multiple), free)
        ranked = _ranked(members, score, exact)
        out.update(ranked[:max(0, min(free - target, len(ranked)))])
    return out


def _allocate(fams: list[list[int]], ratio: float, score: np.ndarray, exact: set[int], allocation: str) -> set[int]:
    chosen: set[int] = set()
    if allocation == "layer":
        for members in fams:
            want = min(int(math.floor(ratio * len(members) + 1e-9)), len(members) - 1)
            need = want - sum(1 for g in members if g in exact)
            if need <= 0:
                continue
            chosen.update(_ranked(members, score, exact)[:need])
        return chosen
    budget = int(math.floor(ratio * sum(len(m) for m in fams) + 1e-9)) - sum(g in exact for m in fams for g in m)
    ranked, room = [], []
    for k, members in enumerate(fams):
        values = np.array([score[g] for g in members], dtype=np.float64)
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else float("nan")
        room.append(len(members) - 1 - sum(g in exact for g in members))
        for g, v in zip(members, values):
            if g in exact or not np.isfinite(v) or not np.isfinite(mean):
                continue
            ranked.append((v / mean if mean > 0 else 0.0, g, k))
    for _, g, k in sorted(ranked):
        if budget <= 0:
            break
        if room[k] > 0:
            chosen.add(g)
            room[k] -= 1
            budget -= 1
    return chosen
