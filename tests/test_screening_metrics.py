"""The ISIC benchmark's metrics against hand-computed cases: sensitivity at a fixed specificity,
balanced accuracy, the stratified bootstrap CI, the paired t-test over seeds, and their use in aggregate."""

import numpy as np
import pytest
from scipy import stats

from models.evaluation.resampling import bootstrap_ci, paired_t_test
from models.evaluation.roc import balanced_accuracy, roc_auc, sensitivity_at_specificity
from models.experiment.aggregate import aggregate, subgroup_aucs
from models.experiment.subgroups import age_band
from tests.test_experiment import fake_unit

# 4 positives, 10 negatives; scores sorted by hand below.
Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
S = [0.95, 0.9, 0.6, 0.3, 0.85, 0.7, 0.5, 0.45, 0.4, 0.35, 0.2, 0.15, 0.1, 0.05]


def test_sensitivity_at_specificity_by_hand():
    # Thresholds from the top: 0.95 (1 TP), 0.9 (2 TP), 0.85 (1 FP: spec 0.9), 0.7 (2 FP: spec 0.8),
    # 0.6 (3 TP, spec 0.8), ... At spec >= 0.9 the best is 2/4 TP (threshold 0.85 adds a FP, still 0.9).
    assert sensitivity_at_specificity(Y, S, 0.9) == 0.5
    # spec >= 0.8 allows 2 FPs: threshold 0.6 catches 3 of 4.
    assert sensitivity_at_specificity(Y, S, 0.8) == 0.75
    # spec 1.0: no FP allowed: only the positives above 0.85.
    assert sensitivity_at_specificity(Y, S, 1.0) == 0.5
    # A perfect ranking reaches sensitivity 1 at any specificity.
    assert sensitivity_at_specificity([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 1.0) == 1.0
    with pytest.raises(ValueError, match="specificity"):
        sensitivity_at_specificity(Y, S, 0.0)


def test_balanced_accuracy_by_hand():
    # Threshold 0.5: positives >= 0.5: 3 of 4 (0.75); negatives < 0.5: 7 of 10 (0.7) -> 0.725.
    assert balanced_accuracy(Y, S, 0.5) == pytest.approx(0.725)


def test_bootstrap_ci_keeps_classes_and_covers_the_value():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.25).astype(int)
    s = y * 1.0 + rng.normal(size=300)
    ci = bootstrap_ci(y, s, roc_auc, n_boot=500, seed=3)
    assert ci.value == pytest.approx(roc_auc(y, s))
    assert ci.low < ci.value < ci.high and 0.05 < ci.high - ci.low < 0.25
    assert bootstrap_ci(y, s, roc_auc, n_boot=500, seed=3) == ci  # deterministic for a seed
    # Stratified: a statistic that needs both classes never fails, and the class counts stay fixed.
    counts = bootstrap_ci(y, s, lambda yy, _: float(yy.sum()), n_boot=50)
    assert counts.low == counts.high == y.sum()
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_ci([1, 1], [0.2, 0.3], roc_auc)


def test_paired_t_test_by_hand():
    a = [0.70, 0.72, 0.69]
    b = [0.75, 0.74, 0.73]
    # d = (0.05, 0.02, 0.04): mean 0.11/3, sd = sqrt(sum((d - mean)^2) / 2)
    d = np.array([0.05, 0.02, 0.04])
    mean = 0.11 / 3
    sd = np.sqrt(((d - mean) ** 2).sum() / 2)
    t = mean / (sd / np.sqrt(3))
    result = paired_t_test(a, b)
    assert result.mean_difference == pytest.approx(mean) and result.sd_difference == pytest.approx(sd)
    assert result.t == pytest.approx(t)
    assert result.p_value == pytest.approx(2 * stats.t.sf(t, 2))
    assert result.p_value == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert paired_t_test([0.5, 0.6], [0.5, 0.6]).p_value == 1.0  # no difference at all
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test([0.5], [0.6])


def test_aggregate_resolves_the_primary_on_val_not_on_test():
    rng = np.random.default_rng(1)
    labels = [int(v) for v in rng.random(400) < 0.25]
    y = np.array(labels)
    units = []
    for seed in range(4):
        # oversample is better on val but worse on test than weighted-loss: val must decide.
        units.append(fake_unit("none", seed, labels, 0.3 * y + rng.random(400), val_auc=0.60))
        units.append(fake_unit("oversample", seed, labels, 0.4 * y + rng.random(400), val_auc=0.80))
        units.append(fake_unit("weighted-loss", seed, labels, 1.0 * y + rng.random(400), val_auc=0.70))
        units.append(fake_unit("synthetic", seed, labels, 1.0 * y + rng.random(400), val_auc=0.75))
    groups = {"sex": ["male" if i % 2 else "female" for i in range(400)]}
    results = aggregate(units, primary={"strategy": "synthetic", "against": "best-classical"}, groups=groups)
    assert results["best_classical"] == "oversample"
    primary = results["primary"]
    assert primary["against_resolved"] == "oversample" and primary["ensemble_auc_difference"] > 0
    assert primary["ensemble_delong_p"] < 0.01 and primary["seeds_better"] == 4
    assert primary["paired_t_p"] < 0.05 and primary["paired_t_mean_auc_difference"] > 0
    synth = results["strategies"]["synthetic"]
    assert synth["vs_best_classical"]["ensemble_auc_difference"] == primary["ensemble_auc_difference"]
    assert "vs_best_classical" not in results["strategies"]["weighted-loss"]
    assert (
        synth["ensemble_sens_at_spec90_ci95"][0]
        <= synth["ensemble_sens_at_spec90"]
        <= synth["ensemble_sens_at_spec90_ci95"][1]
    )
    assert len(synth["sens_at_spec90_per_seed"]) == 4 and 0 < synth["balanced_accuracy_mean"] < 1
    sub = results["subgroups"]["sex"]
    assert set(sub) == {"female", "male"} and sub["male"]["n"] == 200
    assert set(sub["male"]) == {"n", "n_positive", "none", "synthetic"}


def test_subgroups_without_both_classes_and_age_bands():
    out = subgroup_aucs(
        [1, 0, 1, 1], {"site": ["a", "a", "b", "b"]}, {"none": np.array([0.9, 0.1, 0.8, 0.7])}
    )
    assert out["site"]["a"]["none"]["auc"] == 1.0 and out["site"]["b"]["none"] is None
    assert [age_band(v) for v in ("15", "49.9", "50", "64", "65", "85", "unknown", "")] == [
        "<50", "<50", "50-64", "50-64", ">=65", ">=65", "unknown", "unknown",
    ]  # fmt: skip
