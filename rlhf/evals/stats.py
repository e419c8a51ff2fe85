"""Intervals and calibration for the report card (scipy where it has them).

Why these: accuracy over n items is a binomial proportion (Wilson interval, good at small n
and near 0/1); means of per-item scores (ROUGE, rewards) get a percentile bootstrap; two
versions scored on the same items get a paired bootstrap of the difference; calibration is
HELM's expected calibration error over equal-width confidence bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (scipy's binomtest); (nan, nan) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_ci(values: Sequence[float], seed: int = 0, confidence: float = 0.95,
                 n_resamples: int = 1000) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy.stats.bootstrap), deterministic for a seed."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int = 0, confidence: float = 0.95,
                     n_resamples: int = 1000) -> dict[str, float]:
    """Mean of a - b over the same items, its percentile interval and a two-sided p-value
    (share of resampled differences on the other side of zero, doubled)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap needs equal lengths, got {x.size} and {y.size}")
    if x.size == 0:
        return {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {"delta": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(min(1.0, p))}


def ece(probs: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width confidence bins of
    (bin share) * |accuracy in bin - mean confidence in bin|. `probs` is the confidence of the
    chosen answer (the max normalised choice probability); a confidence of exactly 1 goes in the
    last bin, 0 in the first."""
    p = np.asarray(probs, dtype=float)
    c = np.asarray(correct, dtype=float)
    if p.shape != c.shape:
        raise ValueError("probs and correct must have the same length")
    if p.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(c[mask].mean() - p[mask].mean())
    return float(total)


__all__ = ["bootstrap_ci", "ece", "paired_bootstrap", "wilson"]
