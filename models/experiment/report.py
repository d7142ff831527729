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


def markdown(results: dict, meta: dict) -> str:
    rows = []
    for name, s in results["strategies"].items():
        vs = s.get("vs_baseline")
        comparison = (
            f"{vs['ensemble_auc_difference']:+.3f} (p = {vs['ensemble_delong_p']:.3g}); "
            f"better in {vs['seeds_better']}/{vs['seeds_compared']} seeds"
            if vs
            else "baseline"
        )
        rows.append(
            f"| {name} | {s['n_synthetic_train']} | {s['auc_mean']:.3f} +- {s['auc_sd']:.3f} "
            f"[{s['auc_mean_ci95'][0]:.3f}, {s['auc_mean_ci95'][1]:.3f}] | "
            f"{s['ensemble_auc']:.3f} [{s['ensemble_auc_ci95'][0]:.3f}, {s['ensemble_auc_ci95'][1]:.3f}] | "
            f"{s['sensitivity_mean']:.3f} +- {s['sensitivity_sd']:.3f} | "
            f"{s['specificity_mean']:.3f} +- {s['specificity_sd']:.3f} | {comparison} |"
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
        fidelity_md = f"""
## Clinical relevance of the synthetic lesions (paper 001)

KID on the {fidelity["features"]}; held-out real images (val + test) as references; n = {fidelity["n"]}.

| comparison | KID mean +- std (over subsets of {a["subset_size"]} / {b["subset_size"]}) | better when |
|---|---|---|
| synthetic lesion vs real lesion | {a["mean"]:.4f} +- {a["std"]:.4f} | lower |
| synthetic lesion vs real normal | {b["mean"]:.4f} +- {b["std"]:.4f} | higher |

![t-SNE](tsne.png)
"""
    settings = "\n".join(f"- {k}: `{v}`" for k, v in meta.items())
    return f"""# Experiment report: {meta.get("name", "")}

Test split only ({results["test_cases"]} cases, {results["test_positives"]} positive), never seen by the
synthesizer or any classifier. Thresholds were chosen on `val` (most specific threshold reaching the target
sensitivity) and applied unchanged to `test`.

| strategy | synthetic train images | AUC mean +- sd [95% CI over seeds] | seed-averaged AUC [DeLong 95% CI] | sensitivity | specificity | vs `{results["baseline"]}`: AUC difference of seed-averaged scores (DeLong p) |
|---|---:|---|---|---|---|---|
{table}

![ROC](roc.png)
{fidelity_md}{series_md}
## Settings
{settings}
"""


def write_report(out: Path, results: dict, meta: dict) -> Path:
    atomic_write_json(out / "results.json", {"meta": meta, **results})
    atomic_write_bytes(out / "roc.png", roc_figure(results))
    atomic_write_text(out / "report.md", markdown(results, meta))
    return out / "report.md"
