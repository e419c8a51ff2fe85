"""Labeler quality: gold accuracy, agreement (Kendall's tau, Krippendorff's alpha) and the
reliability weight that aggregation gives each labeler's pairs.

reliability = the mean of the labeler's smoothed gold accuracy and smoothed agreement
((tau + 1) / 2), each smoothed towards 1.0 with PRIOR_WEIGHT pseudo-observations so a new
labeler starts at full weight and loses it only with evidence; floored at MIN_RELIABILITY.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations

import numpy as np
from django.db import transaction

PRIOR_WEIGHT = 3.0
MIN_RELIABILITY = 0.05


def rank_map(groups: list[list[int]]) -> dict[int, int]:
    """completion id → rank position (ties share a position)."""
    return {cid: i for i, group in enumerate(groups) for cid in group}


def kendall_tau(a: list[list[int]], b: list[list[int]]) -> float | None:
    """Kendall's tau-b between two rankings of the same completions (None if undefined)."""
    ra, rb = rank_map(a), rank_map(b)
    ids = sorted(set(ra) & set(rb))
    if len(ids) < 2:
        return None
    conc = disc = ties_a = ties_b = 0
    for i, j in combinations(ids, 2):
        da, db = ra[i] - ra[j], rb[i] - rb[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else None


def gold_agreement(ranking: list[list[int]], gold: list[list[int]]) -> tuple[float, int]:
    """(credit, pairs): over the gold's strict pairs, 1 if ordered alike, 0.5 if tied, else 0."""
    rr, rg = rank_map(ranking), rank_map(gold)
    credit, pairs = 0.0, 0
    for i, j in combinations(sorted(rg), 2):
        if rg[i] == rg[j] or i not in rr or j not in rr:
            continue
        pairs += 1
        dg, dr = rg[i] - rg[j], rr[i] - rr[j]
        credit += 1.0 if dr and (dr > 0) == (dg > 0) else (0.5 if dr == 0 else 0.0)
    return credit, pairs


def krippendorff_alpha(rankings_by_task: dict[int, dict[int, list[list[int]]]]) -> float | None:
    """Ordinal Krippendorff's alpha over a set of tasks: units = (task, completion), coders = labelers."""
    import krippendorff

    labelers = sorted({lab for per_task in rankings_by_task.values() for lab in per_task})
    units: list[dict[int, int]] = []
    for per_task in rankings_by_task.values():
        if len(per_task) < 2:
            continue
        maps = {lab: rank_map(order) for lab, order in per_task.items()}
        cids = sorted({c for m in maps.values() for c in m})
        units += [{lab: m[c] for lab, m in maps.items() if c in m} for c in cids]
    if len(units) < 2 or len(labelers) < 2:
        return None
    row = {lab: i for i, lab in enumerate(labelers)}
    data = np.full((len(labelers), len(units)), np.nan)
    for u, values in enumerate(units):
        for lab, v in values.items():
            data[row[lab], u] = v
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None
    try:
        return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    except (ValueError, ZeroDivisionError):
        return None


def _smoothed(total: float, n: float) -> float:
    return (total + PRIOR_WEIGHT * 1.0) / (n + PRIOR_WEIGHT)


def labeler_quality(max_tasks: int | None = None) -> dict[int, dict]:
    """Gold accuracy and mean pairwise tau per labeler (streams rankings grouped by task)."""
    from feedback.models import Ranking

    stats: dict[int, dict] = defaultdict(lambda: {"gold_credit": 0.0, "gold_pairs": 0, "gold_tasks": 0,
                                                  "tau_sum": 0.0, "tau_n": 0})
    qs = Ranking.objects.order_by("task_id", "id").values_list("task_id", "labeler_id", "order",
                                                              "task__is_gold", "task__gold_order")
    current, group = None, []

    def flush(group):
        if not group:
            return
        _, _, _, is_gold, gold_order = group[0]
        if is_gold and gold_order:
            for _, lab, order, _, _ in group:
                credit, pairs = gold_agreement(order, gold_order)
                s = stats[lab]
                s["gold_credit"] += credit
                s["gold_pairs"] += pairs
                s["gold_tasks"] += 1
            return
        for (_, la, oa, _, _), (_, lb, ob, _, _) in combinations(group, 2):
            tau = kendall_tau(oa, ob)
            if tau is None:
                continue
            for lab in (la, lb):
                stats[lab]["tau_sum"] += tau
                stats[lab]["tau_n"] += 1

    for row in qs.iterator(chunk_size=20_000):
        if row[0] != current:
            flush(group)
            current, group = row[0], []
        group.append(row)
    flush(group)
    return dict(stats)


def reliability_from(s: dict) -> tuple[float | None, float | None, float]:
    gold = s["gold_credit"] / s["gold_pairs"] if s["gold_pairs"] else None
    tau = s["tau_sum"] / s["tau_n"] if s["tau_n"] else None
    parts = []
    if s["gold_pairs"]:
        parts.append(_smoothed(s["gold_credit"], s["gold_pairs"]))
    if s["tau_n"]:
        parts.append(_smoothed((s["tau_sum"] + s["tau_n"]) / 2.0, s["tau_n"]))
    rel = sum(parts) / len(parts) if parts else 1.0
    return gold, tau, round(max(MIN_RELIABILITY, min(1.0, rel)), 6)


def update_reliability() -> int:
    """Recompute LabelerStats for every labeler with rankings; returns how many were updated."""
    from feedback.models import LabelerStats

    stats = labeler_quality()
    with transaction.atomic():
        for labeler_id, s in stats.items():
            gold, tau, rel = reliability_from(s)
            LabelerStats.objects.update_or_create(labeler_id=labeler_id, defaults={
                "gold_accuracy": gold, "gold_count": s["gold_tasks"], "agreement_tau": tau,
                "agreement_count": s["tau_n"], "reliability": rel})
    return len(stats)
