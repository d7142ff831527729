"""Aggregate finished units into the experiment's results (pure functions over test scores).

Per strategy:
  * AUC per seed -> mean, sd and a 95% t-interval over seeds;
  * the seed-averaged classifier (paper 000: "computed the average output from these sessions"): AUC of
    the mean score with DeLong's 95% CI;
  * sensitivity and specificity of each seed's model at its own validated threshold -> mean and sd;
  * the paired comparison with ``none``: DeLong's test of the seed-averaged scores on the same test
    cases, and per-seed DeLong tests (seed k of the strategy against seed k of ``none``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from models.evaluation.roc import (
    auc_confidence_interval,
    delong_test,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)

FPR_GRID = np.linspace(0.0, 1.0, 101)


def mean_roc(units: list[dict]) -> dict:
    """TPR interpolated on a common FPR grid per seed -> mean and sd (for the ROC band)."""
    tprs = []
    for u in units:
        fpr, tpr, _ = roc_curve(u["labels"], u["scores"])
        tprs.append(np.interp(FPR_GRID, fpr, tpr))
    tprs = np.array(tprs)
    return {"fpr": FPR_GRID.tolist(), "tpr_mean": tprs.mean(0).tolist(), "tpr_sd": tprs.std(0).tolist()}


def _check_same_cases(units: list[dict]) -> None:
    first = units[0]
    for u in units[1:]:
        if u["test_rows"] != first["test_rows"] or u["labels"] != first["labels"]:
            raise ValueError(f"unit {u['unit']} was scored on different test cases than {first['unit']}")


def summarize_strategy(units: list[dict]) -> dict:
    _check_same_cases(units)
    labels = np.array(units[0]["labels"])
    aucs = np.array([roc_auc(labels, u["scores"]) for u in units])
    n = len(aucs)
    sd = float(aucs.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    ensemble = np.mean([u["scores"] for u in units], axis=0)
    ci = auc_confidence_interval(labels, ensemble)
    sens_spec = np.array([sensitivity_specificity(labels, u["scores"], u["threshold"]) for u in units])
    return {
        "n_seeds": n,
        "auc_per_seed": aucs.tolist(),
        "auc_mean": float(aucs.mean()),
        "auc_sd": sd,
        "auc_mean_ci95": [float(aucs.mean() - half), float(aucs.mean() + half)],
        "ensemble_auc": ci.auc,
        "ensemble_auc_ci95": [ci.low, ci.high],
        "sensitivity_mean": float(sens_spec[:, 0].mean()),
        "sensitivity_sd": float(sens_spec[:, 0].std(ddof=1)) if n > 1 else 0.0,
        "specificity_mean": float(sens_spec[:, 1].mean()),
        "specificity_sd": float(sens_spec[:, 1].std(ddof=1)) if n > 1 else 0.0,
        "val_auc_mean": float(np.mean([u["val"]["auc"] for u in units])),
        "epochs_run_mean": float(np.mean([u["epochs_run"] for u in units])),
        "n_synthetic_train": int(units[0]["train"]["n_synthetic"]),
        "loss_pos_weight": float(units[0]["train"].get("pos_weight", 1.0)),
        "roc": mean_roc(units),
    }


def compare_with_baseline(units: list[dict], baseline: list[dict]) -> dict:
    _check_same_cases(units + baseline)
    labels = units[0]["labels"]
    ensemble = delong_test(
        labels, np.mean([u["scores"] for u in baseline], 0), np.mean([u["scores"] for u in units], 0)
    )
    by_seed = {u["seed"]: u for u in baseline}
    per_seed = [
        delong_test(labels, by_seed[u["seed"]]["scores"], u["scores"]) for u in units if u["seed"] in by_seed
    ]
    return {
        "ensemble_auc_difference": ensemble.difference,
        "ensemble_delong_z": ensemble.z,
        "ensemble_delong_p": ensemble.p_value,
        "per_seed_auc_difference": [c.difference for c in per_seed],
        "per_seed_delong_p": [c.p_value for c in per_seed],
        "seeds_better": int(sum(c.difference > 0 for c in per_seed)),
        "seeds_compared": len(per_seed),
    }


def aggregate(unit_results: list[dict], baseline: str = "none") -> dict:
    """{strategy: summary (+ comparison with the baseline)} from the test_scores.json of every unit."""
    by_strategy: dict[str, list[dict]] = {}
    for u in sorted(unit_results, key=lambda u: (u["strategy"], u["seed"])):
        by_strategy.setdefault(u["strategy"], []).append(u)
    if baseline not in by_strategy:
        raise ValueError(f"no finished units of the baseline strategy {baseline!r}")
    labels = by_strategy[baseline][0]["labels"]
    out = {
        "test_cases": len(labels),
        "test_positives": int(sum(labels)),
        "baseline": baseline,
        "strategies": {},
    }
    for strategy, units in by_strategy.items():
        summary = summarize_strategy(units)
        if strategy != baseline:
            summary["vs_baseline"] = compare_with_baseline(units, by_strategy[baseline])
        out["strategies"][strategy] = summary
    return out
