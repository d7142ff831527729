"""Aggregate finished units into the experiment's results (pure functions over test scores).

Per strategy:
  * AUC per seed -> mean, sd and a 95% t-interval over seeds;
  * the seed-averaged classifier (paper 000: "computed the average output from these sessions"): AUC of
    the mean score with DeLong's 95% CI;
  * sensitivity at 90% specificity (read off the ROC, no threshold needed): per seed -> mean and sd, and
    for the seed-averaged classifier with a stratified bootstrap CI over test cases;
  * sensitivity, specificity and balanced accuracy of each seed's model at its own validated threshold;
  * paired comparisons with ``none`` and with the best classical strategy (highest mean *val* AUC, so the
    test set does not choose it): DeLong's test of the seed-averaged scores on the same test cases, and a
    paired t-test over seeds of the per-seed test AUCs (seed k against seed k);
  * the pre-registered primary comparison (from the config), resolved the same way and marked as such;
  * subgroups (e.g. sex, age band): AUC of the seed-averaged ``none`` and primary classifiers per group.

:func:`aggregate_units` is the experiment's aggregate stage: it trains nothing and runs no unit. It reads
every unit's ``test_scores.json`` and the checkpoint series' ``series.json`` (written by the series stage,
models/experiment/series.py), adds the synthetic images' fidelity (inference with the finished ``none``
classifier) and writes results.json, report.md and roc.png.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from models.classifier.balancing import BEST_CLASSICAL, CLASSICAL
from models.data.manifest import load_manifest
from models.errors import LesionsynthError
from models.evaluation.resampling import bootstrap_ci, paired_t_test
from models.evaluation.roc import (
    auc_confidence_interval,
    balanced_accuracy,
    delong_test,
    roc_auc,
    roc_curve,
    sensitivity_at_specificity,
    sensitivity_specificity,
)
from models.experiment.config import ExperimentConfig
from models.experiment.fidelity import fidelity_step
from models.experiment.report import write_report
from models.experiment.subgroups import case_groups
from models.experiment.units import SCORES, all_units

if TYPE_CHECKING:
    from models.experiment.prepare import PreparedData

#: The series stage's results in the experiment's folder (models/experiment/series.py).
SERIES_RESULTS = "series.json"
FPR_GRID = np.linspace(0.0, 1.0, 101)
SPECIFICITY = 0.9  # the fixed operating point: sensitivity at 90% specificity


def _sens_at_spec(y: np.ndarray, s: np.ndarray) -> float:
    return sensitivity_at_specificity(y, s, SPECIFICITY)


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

    def spread(v: np.ndarray) -> float:
        """sd over seeds (0 for one seed)."""
        return float(v.std(ddof=1)) if n > 1 else 0.0

    sd = spread(aucs)
    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    ensemble = np.mean([u["scores"] for u in units], axis=0)
    ci = auc_confidence_interval(labels, ensemble)
    sens_spec = np.array([sensitivity_specificity(labels, u["scores"], u["threshold"]) for u in units])
    bal_acc = np.array([balanced_accuracy(labels, u["scores"], u["threshold"]) for u in units])
    at_spec = np.array([_sens_at_spec(labels, np.asarray(u["scores"])) for u in units])
    at_spec_ensemble = bootstrap_ci(labels, ensemble, _sens_at_spec)

    return {
        "n_seeds": n,
        "auc_per_seed": aucs.tolist(),
        "auc_mean": float(aucs.mean()),
        "auc_sd": sd,
        "auc_mean_ci95": [float(aucs.mean() - half), float(aucs.mean() + half)],
        "ensemble_auc": ci.auc,
        "ensemble_auc_ci95": [ci.low, ci.high],
        "sensitivity_mean": float(sens_spec[:, 0].mean()),
        "sensitivity_sd": spread(sens_spec[:, 0]),
        "specificity_mean": float(sens_spec[:, 1].mean()),
        "specificity_sd": spread(sens_spec[:, 1]),
        "balanced_accuracy_mean": float(bal_acc.mean()),
        "balanced_accuracy_sd": spread(bal_acc),
        "sens_at_spec90_per_seed": at_spec.tolist(),
        "sens_at_spec90_mean": float(at_spec.mean()),
        "sens_at_spec90_sd": spread(at_spec),
        "ensemble_sens_at_spec90": at_spec_ensemble.value,
        "ensemble_sens_at_spec90_ci95": [at_spec_ensemble.low, at_spec_ensemble.high],
        "val_auc_per_seed": [float(u["val"]["auc"]) for u in units],
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
    paired = [u for u in units if u["seed"] in by_seed]
    per_seed = [delong_test(labels, by_seed[u["seed"]]["scores"], u["scores"]) for u in paired]
    t = paired_t_test([c.auc_a for c in per_seed], [c.auc_b for c in per_seed]) if len(per_seed) > 1 else None
    return {
        "ensemble_auc_difference": ensemble.difference,
        "ensemble_delong_z": ensemble.z,
        "ensemble_delong_p": ensemble.p_value,
        "per_seed_auc_difference": [c.difference for c in per_seed],
        "per_seed_delong_p": [c.p_value for c in per_seed],
        "seeds_better": int(sum(c.difference > 0 for c in per_seed)),
        "seeds_compared": len(per_seed),
        "paired_t_mean_auc_difference": t.mean_difference if t else None,
        "paired_t_p": t.p_value if t else None,
        "paired_t_test": "two-sided paired t-test over seeds of per-seed test AUC (seed k vs seed k)",
    }


def best_classical(summaries: dict[str, dict]) -> str | None:
    """The classical strategy (no synthetic images) with the highest mean val AUC; never chosen on test."""
    classical = [name for name in CLASSICAL if name in summaries]
    return max(classical, key=lambda n: summaries[n]["val_auc_mean"]) if classical else None


def subgroup_aucs(labels: list[int], groups: dict[str, list[str]], scores: dict[str, np.ndarray]) -> dict:
    """{attribute: {value: {n, n_positive, <strategy>: {auc, ci95} or None}}} on seed-averaged scores.

    ``groups``: attribute -> the value of each test case (e.g. "sex" -> ["male", "female", ...]);
    a group with a single class gets None (no AUC is defined)."""
    y = np.asarray(labels)
    out: dict[str, dict] = {}
    for attribute, values in groups.items():
        values = np.asarray(values)
        out[attribute] = {}
        for value in sorted(set(values.tolist())):
            sel = values == value
            entry: dict = {"n": int(sel.sum()), "n_positive": int(y[sel].sum())}
            for name, s in scores.items():
                if 0 < y[sel].sum() < sel.sum():
                    ci = auc_confidence_interval(y[sel], s[sel])
                    entry[name] = {"auc": ci.auc, "ci95": [ci.low, ci.high]}
                else:
                    entry[name] = None
            out[attribute][value] = entry
    return out


def aggregate(
    unit_results: list[dict],
    baseline: str = "none",
    primary: dict | None = None,
    groups: dict[str, list[str]] | None = None,
) -> dict:
    """{strategy: summary (+ comparisons)} from the test_scores.json of every unit.

    ``primary``: the pre-registered comparison {strategy, against}, against a strategy or
    "best-classical"; ``groups``: per-test-case subgroup values (see :func:`subgroup_aucs`).
    """
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
    best = best_classical(out["strategies"])
    out["best_classical"] = best
    if best:
        for strategy, units in by_strategy.items():
            if strategy not in CLASSICAL:
                out["strategies"][strategy]["vs_best_classical"] = compare_with_baseline(
                    units, by_strategy[best]
                )
    if primary:
        declared = primary.get("against", BEST_CLASSICAL)
        against = best if declared == BEST_CLASSICAL else declared
        out["primary"] = {
            "strategy": primary["strategy"],
            "against": declared,
            "against_resolved": against,
            "chosen_on": "mean val AUC of the classical strategies"
            if declared == BEST_CLASSICAL
            else "named in the config",
            **compare_with_baseline(by_strategy[primary["strategy"]], by_strategy[against]),
        }
    if groups:
        shown = [baseline] + ([primary["strategy"]] if primary else [])
        scores = {n: np.mean([u["scores"] for u in by_strategy[n]], 0) for n in shown}
        out["subgroups"] = subgroup_aucs(labels, groups, scores)
    return out


# -- the aggregate stage ------------------------------------------------------------------------------


def aggregate_units(config: ExperimentConfig, prepared: PreparedData | None = None) -> dict:
    """Aggregate the finished units (and the finished checkpoint series) into the experiment's report."""
    units = all_units(config)
    missing = [u.name for u in units if not u.is_done(config.out)]
    if missing:
        raise LesionsynthError(
            f"cannot aggregate: {len(missing)} unit(s) not finished: {', '.join(missing[:10])}"
        )
    unit_results = [json.loads((u.folder(config.out) / SCORES).read_text()) for u in units]
    groups = None
    if prepared:
        rows = {r.number: r for r in load_manifest(prepared.manifest, check_files=False).rows}
        groups = case_groups(rows, unit_results[0]["test_rows"])
    results = aggregate(unit_results, primary=config.primary or None, groups=groups)
    fidelity = fidelity_step(config, prepared.manifest) if prepared else None
    if fidelity:
        results["fidelity"] = fidelity
    series = read_series(config) if prepared else None
    if series:
        results["series"] = series
    write_report(config.out, results, results_meta(config, prepared))
    return results


def read_series(config: ExperimentConfig) -> dict | None:
    """The series stage's results for this config; None when it has no series; raises when the series
    is not finished (or was made for other snapshots, strategy or seeds)."""
    if not config.series:
        return None
    path = config.out / SERIES_RESULTS
    try:
        series = json.loads(path.read_text())
    except (OSError, ValueError):
        series = None
    expected = (
        [str(s) for s in sorted(set(config.series["snapshots"]))],
        config.series.get("strategy", "synthetic"),
        list(config.series.get("seeds", config.seeds)),
    )
    if (
        not isinstance(series, dict)
        or (
            list(series.get("steps", {})),
            series.get("strategy"),
            series.get("seeds"),
        )
        != expected
    ):
        raise LesionsynthError(
            f"cannot aggregate: the checkpoint series is not finished ({path} is missing or was made for "
            "another series; run the series stage: `lesionsynth experiment` without --aggregate-only)"
        )
    return series


def results_meta(config: ExperimentConfig, prepared: PreparedData | None) -> dict:
    def shown(path) -> str | None:
        """Paths as the config file writes them (relative to its folder), so reports hold no home dirs."""
        if path is None:
            return None
        base = config.source.parent if config.source else Path.cwd()
        return os.path.relpath(Path(path).resolve(), base.resolve())

    return {
        "name": config.name,
        "config_file": config.source.name if config.source else None,
        "manifest": shown(prepared.manifest if prepared else config.manifest),
        "synthesizer": shown(prepared.synthesizer) if prepared and prepared.synthesizer else None,
        "synthetic_images": prepared.synthetic_count if prepared else None,
        "classifier": config.classifier,
        "strategies": list(config.strategies),
        "seeds": list(config.seeds),
        "target_sensitivity": config.target_sensitivity,
        "split": {**config.split, "file": shown(config.role_file)} if config.role_file else config.split,
        "balance": config.balance,
        "primary (pre-registered)": config.primary or None,
        "synthesizer_settings": {k: v for k, v in asdict(config)["synthesizer"].items() if k != "model"},
    }
