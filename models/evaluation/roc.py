"""ROC analysis for a binary screening classifier: AUC, DeLong's test, thresholds, sensitivity/specificity.

Pure numpy functions (MONAI-style: arrays in, numbers out), used by classifier training (threshold on
``val``) and by the experiment (``test`` only).

Shapes: ``y_true`` (N,) in {0, 1} (1 = the positive, high-grade class); ``scores`` (N,) float, higher =
more likely positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError("labels must be 0/1")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("ROC needs both classes among the labels")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return y, s


def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (ties share the mean rank), 1-based, as in Sun & Xu 2014 Algorithm 1."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    ranks = np.empty(n, dtype=np.float64)
    i = 0
    while i < n:
        j = i
        while j < n and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks
    return out


def _delong_components(y: np.ndarray, scores: np.ndarray):
    """AUCs and DeLong structural components for k score vectors (k, N) on the same labels.

    Fast DeLong (Sun & Xu 2014, "Fast implementation of DeLong's algorithm for comparing the areas under
    correlated ROC curves", IEEE SPL 21(11)).
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.stack([_midrank(p) for p in pos])
    ty = np.stack([_midrank(q) for q in neg])
    tz = np.stack([_midrank(np.concatenate([p, q])) for p, q in zip(pos, neg, strict=True)])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U / (m n), ties counted half)."""
    y, s = _check(y_true, scores)
    return float(_delong_components(y, s[None])[0][0])


@dataclass(frozen=True)
class AUCWithCI:
    auc: float
    low: float
    high: float
    se: float


def auc_confidence_interval(y_true, scores, level: float = 0.95) -> AUCWithCI:
    """AUC with DeLong's asymptotic CI (logit-free normal interval, clipped to [0, 1])."""
    y, s = _check(y_true, scores)
    aucs, cov = _delong_components(y, s[None])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = stats.norm.ppf(0.5 + level / 2)
    auc = float(aucs[0])
    return AUCWithCI(auc=auc, low=max(0.0, auc - z * se), high=min(1.0, auc + z * se), se=se)


@dataclass(frozen=True)
class PairedComparison:
    auc_a: float
    auc_b: float
    difference: float  # auc_b - auc_a
    z: float
    p_value: float


def delong_test(y_true, scores_a, scores_b) -> PairedComparison:
    """DeLong et al. 1988 test of equal AUC for two classifiers scored on the same cases (two-sided)."""
    y, a = _check(y_true, scores_a)
    _, b = _check(y_true, scores_b)
    aucs, cov = _delong_components(y, np.stack([a, b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[1] - aucs[0])
    if var <= 1e-15:
        z, p = 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / np.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    return PairedComparison(float(aucs[0]), float(aucs[1]), diff, float(z), p)


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; a case is positive when score >= threshold."""
    y, s = _check(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (len(y) - y.sum())]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thresholds


def threshold_for_sensitivity(y_true, scores, target: float = 0.9) -> float:
    """The highest threshold whose sensitivity on (y_true, scores) is >= target (best specificity)."""
    if not 0.0 < target <= 1.0:
        raise ValueError("target sensitivity must be in (0, 1]")
    _, tpr, thresholds = roc_curve(y_true, scores)
    ok = np.flatnonzero(tpr >= target - 1e-12)
    return float(thresholds[ok[0]])


def sensitivity_specificity(y_true, scores, threshold: float) -> tuple[float, float]:
    y, s = _check(y_true, scores)
    pred = s >= threshold
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


def sensitivity_at_specificity(y_true, scores, specificity: float = 0.9) -> float:
    """The highest sensitivity of any threshold whose specificity is >= ``specificity`` (a threshold-free
    operating point read off the empirical ROC: max TPR over the points with FPR <= 1 - specificity)."""
    if not 0.0 < specificity <= 1.0:
        raise ValueError("specificity must be in (0, 1]")
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())


def balanced_accuracy(y_true, scores, threshold: float) -> float:
    """(sensitivity + specificity) / 2 at a threshold (positive when score >= threshold)."""
    sens, spec = sensitivity_specificity(y_true, scores, threshold)
    return (sens + spec) / 2
