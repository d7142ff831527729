"""Write an experiment's results: results.json, report.md and roc.png (mean ROC per strategy with a band)."""

from __future__ import annotations

import io
from pathlib import Path

from models.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text


def roc_figure(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, s in results["strategies"].items():
        roc = s["roc"]
        mean, sd = roc["tpr_mean"], roc["tpr_sd"]
        label = f"{name}: AUC {s['auc_mean']:.3f} +- {s['auc_sd']:.3f}"
        (line,) = ax.plot(roc["fpr"], mean, label=label, lw=1.6)
        lo = [max(0.0, m - d) for m, d in zip(mean, sd, strict=True)]
        hi = [min(1.0, m + d) for m, d in zip(mean, sd, strict=True)]
        ax.fill_between(roc["fpr"], lo, hi, color=line.get_color(), alpha=0.12)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    n_seeds = max(s["n_seeds"] for s in results["strategies"].values())
    ax.set_title(f"Test ROC, mean over {n_seeds} seeds (band: +- 1 sd)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def comparison_text(vs: dict | None) -> str:
    """A comparison (vs none, vs the best classical strategy, the primary) as one table cell."""
    if not vs:
        return "-"
    return (
        f"{vs['ensemble_auc_difference']:+.3f} (DeLong p = {_p(vs['ensemble_delong_p'])}); "
        f"seeds {vs['seeds_better']}/{vs['seeds_compared']} better, paired t p = {_p(vs.get('paired_t_p'))}"
    )


def primary_markdown(results: dict) -> str:
    primary = results.get("primary")
    if not primary:
        return ""
    against = primary["against_resolved"]
    if primary["ensemble_delong_p"] >= 0.05:
        verdict = f"shows no difference from `{against}` detectable at p < 0.05"
    else:
        verdict = f"is {'better' if primary['ensemble_auc_difference'] > 0 else 'worse'} than `{against}` (p < 0.05)"
    return f"""
## Primary comparison (pre-registered in the config before the run)

`{primary["strategy"]}` vs `{primary["against_resolved"]}` (declared as `{primary["against"]}`; chosen on:
{primary["chosen_on"]}). Test AUC difference of the seed-averaged classifiers
{primary["ensemble_auc_difference"]:+.3f}, DeLong p = {_p(primary["ensemble_delong_p"])}; per seed
{primary["seeds_better"]}/{primary["seeds_compared"]} better, mean per-seed difference
{primary["paired_t_mean_auc_difference"]:+.3f} (paired t-test over seeds, p = {_p(primary["paired_t_p"])}).
**Result on this test set: `{primary["strategy"]}` {verdict}.**
Every other comparison in this report is secondary (no correction for multiple comparisons).
"""


def subgroups_markdown(results: dict) -> str:
    subgroups = results.get("subgroups")
    if not subgroups:
        return ""
    names = [results["baseline"]] + ([results["primary"]["strategy"]] if results.get("primary") else [])
    lines = []
    for attribute, values in subgroups.items():
        for value, entry in values.items():
            cells = [
                f"{entry[n]['auc']:.3f} [{entry[n]['ci95'][0]:.3f}, {entry[n]['ci95'][1]:.3f}]"
                if entry.get(n)
                else "n/a"
                for n in names
            ]
            lines.append(
                f"| {attribute} | {value} | {entry['n']} | {entry['n_positive']} | {' | '.join(cells)} |"
            )
    header = " | ".join(f"`{n}` seed-averaged AUC [DeLong 95% CI]" for n in names)
    return f"""
## Subgroups (secondary)

| attribute | group | test cases | positives | {header} |
|---|---|---:|---:|{"---|" * len(names)}
{chr(10).join(lines)}
"""


def markdown(results: dict, meta: dict) -> str:
    rows, ops = [], []
    best = results.get("best_classical")
    for name, s in results["strategies"].items():
        rows.append(
            f"| {name}{' (best classical on val)' if name == best else ''} | {s['n_synthetic_train']} | "
            f"{s['val_auc_mean']:.3f} | {s['auc_mean']:.3f} +- {s['auc_sd']:.3f} "
            f"[{s['auc_mean_ci95'][0]:.3f}, {s['auc_mean_ci95'][1]:.3f}] | "
            f"{s['ensemble_auc']:.3f} [{s['ensemble_auc_ci95'][0]:.3f}, {s['ensemble_auc_ci95'][1]:.3f}] | "
            f"{comparison_text(s.get('vs_baseline'))} | {comparison_text(s.get('vs_best_classical'))} |"
        )
        if "sens_at_spec90_mean" in s:
            ops.append(
                f"| {name} | {s['sens_at_spec90_mean']:.3f} +- {s['sens_at_spec90_sd']:.3f} | "
                f"{s['ensemble_sens_at_spec90']:.3f} [{s['ensemble_sens_at_spec90_ci95'][0]:.3f}, "
                f"{s['ensemble_sens_at_spec90_ci95'][1]:.3f}] | "
                f"{s['sensitivity_mean']:.3f} +- {s['sensitivity_sd']:.3f} | "
                f"{s['specificity_mean']:.3f} +- {s['specificity_sd']:.3f} | "
                f"{s['balanced_accuracy_mean']:.3f} +- {s['balanced_accuracy_sd']:.3f} |"
            )
    table = "\n".join(rows)
    same = [
        n
        for n, s in results["strategies"].items()
        if n.endswith("weighted") and n != "weighted-sampler" and s["loss_pos_weight"] == 1.0
    ]
    if same:
        table += (
            f"\n\nNote: {', '.join(same)} trained with a positive-class loss weight of 1.0: the synthetic "
            "rows already balanced the classes, so it is the same run as its unweighted twin."
        )
    ops_md = ""
    if ops:
        ops_md = f"""
### Operating points

Sensitivity at 90% specificity is read off each test ROC (no threshold); the seed-averaged classifier's
has a stratified bootstrap 95% CI (2,000 resamples of the test cases). Sensitivity, specificity and
balanced accuracy are at each seed's threshold chosen on `val` (target sensitivity
{meta.get("target_sensitivity", 0.9)}).

| strategy | sens. at 90% spec., mean +- sd over seeds | seed-averaged [bootstrap 95% CI] | sensitivity at val threshold | specificity | balanced accuracy |
|---|---|---|---|---|---|
{chr(10).join(ops)}
"""
    series = results.get("series")
    series_md = ""
    if series:
        lines = "\n".join(
            f"| {step} | {v['kid_synthetic_vs_real_lesion']['mean']:.4f} +- {v['kid_synthetic_vs_real_lesion']['std']:.4f} | "
            f"{v['kid_synthetic_vs_real_normal']['mean']:.4f} +- {v['kid_synthetic_vs_real_normal']['std']:.4f} | "
            f"{v['auc_mean']:.3f} +- {v['auc_sd']:.3f} |"
            for step, v in series["steps"].items()
        )
        series_md = f"""
## Fidelity vs usefulness over synthesizer checkpoints (paper 001)

One synthesizer trained with snapshots; for each, its synthetic lesions' KID (features as above) and the
test AUC of `{series["strategy"]}` classifiers (seeds {series["seeds"]}). `none` (real data only):
AUC {series["baseline_auc_mean"]:.3f}.

| synthesizer step | KID vs real lesion (lower better) | KID vs real normal (higher better) | test AUC mean +- sd |
|---|---|---|---|
{lines}

![series](series.png)
"""
    fidelity = results.get("fidelity")
    fidelity_md = ""
    if fidelity:
        a, b = fidelity["kid_synthetic_vs_real_lesion"], fidelity["kid_synthetic_vs_real_normal"]
        ci_note = ""
        if "class_anchored" in fidelity:
            ci_note = (
                "\nIntervals: 2.5-97.5 percentiles of the estimates on subsets of half the smaller set "
                "(conservative). Class-anchored (KID vs real normal above KID vs real lesion, intervals "
                f"apart): **{'yes' if fidelity['class_anchored'] else 'no'}**.\n"
            )
        fidelity_md = f"""
## Clinical relevance of the synthetic lesions (paper 001)

KID on the {fidelity["features"]}; held-out real images (val + test) as references; n = {fidelity["n"]}.
{ci_note}
| comparison | KID mean +- std (over subsets of {a["subset_size"]} / {b["subset_size"]}) | 95% interval | better when |
|---|---|---|---|
| synthetic lesion vs real lesion | {a["mean"]:.4f} +- {a["std"]:.4f} | {_interval(a)} | lower |
| synthetic lesion vs real normal | {b["mean"]:.4f} +- {b["std"]:.4f} | {_interval(b)} | higher |

![t-SNE](tsne.png)
"""
    settings = "\n".join(f"- {k}: `{v}`" for k, v in meta.items())
    return f"""# Experiment report: {meta.get("name", "")}

Test split only ({results["test_cases"]} cases, {results["test_positives"]} positive), never seen by the
synthesizer or any classifier. Thresholds were chosen on `val` (most specific threshold reaching the target
sensitivity) and applied unchanged to `test`.

| strategy | synthetic train images | val AUC (mean) | test AUC mean +- sd [95% CI over seeds] | seed-averaged AUC [DeLong 95% CI] | vs `{results["baseline"]}` | vs best classical (`{results.get("best_classical")}`) |
|---|---:|---|---|---|---|---|
{table}

Comparisons: AUC difference of the seed-averaged scores (DeLong p), seeds better, and the paired t-test
over seeds of per-seed AUCs.

![ROC](roc.png)
{ops_md}{primary_markdown(results)}{subgroups_markdown(results)}{fidelity_md}{series_md}
## Settings
{settings}
"""


def _interval(kid: dict) -> str:
    return f"[{kid['ci95'][0]:.4f}, {kid['ci95'][1]:.4f}]" if "ci95" in kid else "-"


def write_report(out: Path, results: dict, meta: dict) -> Path:
    atomic_write_json(out / "results.json", {"meta": meta, **results})
    atomic_write_bytes(out / "roc.png", roc_figure(results))
    atomic_write_text(out / "report.md", markdown(results, meta))
    return out / "report.md"
