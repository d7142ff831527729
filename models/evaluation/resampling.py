"""Uncertainty of screening metrics: a stratified bootstrap CI over test cases and a paired test over seeds.

Pure numpy/scipy functions (MONAI-style: arrays in, numbers out), used by the experiment's aggregation.

Shapes: ``y_true`` (N,) in {0, 1}; ``scores`` (N,) float; per-seed values (S,) float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class BootstrapCI:
    value: float  # the statistic on the cases themselves
    low: float
    high: float
    n_boot: int


def bootstrap_ci(
    y_true,
    scores,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``statistic(y, scores)``, resampling positives and negatives separately
    (stratified: every replicate keeps the test set's class counts, so a ROC statistic is always defined).
    Deterministic for a seed."""
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError("n_boot must be >= 1 and level in (0, 1)")
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("a stratified bootstrap needs both classes")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values[b] = statistic(y[idx], s[idx])
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return BootstrapCI(float(statistic(y, s)), float(low), float(high), n_boot)


@dataclass(frozen=True)
class PairedT:
    mean_difference: float  # mean of b - a
    sd_difference: float
    t: float
    p_value: float  # two-sided
    n: int


def paired_t_test(a, b) -> PairedT:
    """Two-sided paired t-test of ``b - a`` over matched pairs (e.g. seed k of two strategies).

    With n pairs, t = mean(d) / (sd(d) / sqrt(n)), sd with ddof=1, n - 1 degrees of freedom. Identical
    differences (sd = 0) give p = 1 when they are all 0 and p = 0 otherwise.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    if len(a) < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    d = b - a
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd <= 1e-15:
        return PairedT(
            mean, sd, 0.0 if abs(mean) < 1e-15 else float("inf"), 1.0 if abs(mean) < 1e-15 else 0.0, len(d)
        )
    t = mean / (sd / np.sqrt(len(d)))
    return PairedT(mean, sd, float(t), float(2 * stats.t.sf(abs(t), len(d) - 1)), len(d))
