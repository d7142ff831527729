"""ROC/AUC, DeLong and thresholds against independent references (scikit-learn, brute force, bootstrap)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from models.evaluation.roc import (
    auc_confidence_interval,
    delong_test,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
    threshold_for_sensitivity,
)


def data(n=300, shift=1.0, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.normal(size=n) + shift * y
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn(ties):
    y, s = data(ties=ties)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_curve_matches_sklearn():
    y, s = data(ties=True)
    fpr, tpr, _ = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_delong_standard_error_agrees_with_bootstrap():
    y, s = data(n=400, seed=1)
    ci = auc_confidence_interval(y, s)
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(500):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() != y[idx].max():
            boots.append(roc_auc_score(y[idx], s[idx]))
    assert ci.se == pytest.approx(np.std(boots), rel=0.15)
    assert ci.low < ci.auc < ci.high


def test_delong_paired_test():
    y, a = data(n=300, shift=0.5, seed=2)
    rng = np.random.default_rng(3)
    b = a + 1.5 * y + rng.normal(scale=0.3, size=len(y))  # clearly better on the same cases
    result = delong_test(y, a, b)
    assert result.difference > 0.1 and result.p_value < 1e-4
    same = delong_test(y, a, a)
    assert same.difference == 0 and same.p_value == 1.0
    noisy = delong_test(y, a, a + rng.normal(scale=0.01, size=len(y)))
    assert noisy.p_value > 0.05


def test_threshold_for_target_sensitivity():
    y, s = data(n=500, seed=4)
    t = threshold_for_sensitivity(y, s, 0.9)
    sens, spec = sensitivity_specificity(y, s, t)
    assert sens >= 0.9
    # any higher threshold misses the target: this is the most specific threshold that reaches it
    higher = np.unique(s[s > t])
    assert higher.size == 0 or sensitivity_specificity(y, s, higher.min())[0] < 0.9
    assert 0 < spec < 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, np.nan])
