"""Fidelity vs usefulness across synthesizer checkpoints (paper 001's iteration-wise analysis).

Paper 001 found that the checkpoint with the best-looking images and the best KID was not the one that
helped the classifier. For each snapshot of one synthesizer training run this step measures both:

* fidelity: KID of its synthetic lesions against held-out real lesions (lower = better) and against
  held-out real normals (higher = better), on the features of the experiment's ``none`` classifier;
* usefulness: the test AUC of classifiers trained with its synthetic lesions (``series.strategy``,
  ``series.seeds``), beside the ``none`` baseline.

Each snapshot's balanced set and units live under ``<out>/series/step-NNNNNN/``; finished units are
skipped on rerun, like the main units. This is a stage of its own, after the units (it needs the
``none`` classifiers) and before the aggregate: ``run_series`` trains, balances, runs the series' units
and measures fidelity, then writes ``<out>/series.json`` (and series.png), which the aggregate reads;
on Kubernetes it is the experiment's ``-series`` Job.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from models.artifacts import atomic_write_bytes
from models.balance import balance_dataset
from models.diffusion.train import train_synthesizer
from models.diffusion.train_settings import snapshot_dir
from models.experiment.aggregate import SERIES_RESULTS, summarize_strategy
from models.experiment.config import ExperimentConfig
from models.experiment.fidelity import fidelity_step
from models.experiment.prepare import PreparedData, balance_settings, synthesizer_settings, synthetic_count
from models.experiment.units import SCORES, Unit, run_units


def series_figure(series: dict, baseline_auc: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(s) for s in series["steps"]]
    rows = [series["steps"][str(s)] for s in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.errorbar(
        steps,
        [r["kid_synthetic_vs_real_lesion"]["mean"] for r in rows],
        yerr=[r["kid_synthetic_vs_real_lesion"]["std"] for r in rows],
        marker="o",
        label="vs held-out real lesions (lower = better)",
    )
    ax1.errorbar(
        steps,
        [r["kid_synthetic_vs_real_normal"]["mean"] for r in rows],
        yerr=[r["kid_synthetic_vs_real_normal"]["std"] for r in rows],
        marker="s",
        label="vs held-out real normals (higher = better)",
    )
    ax1.set_xlabel("synthesizer training step")
    ax1.set_ylabel("KID of synthetic lesions")
    ax1.legend(fontsize=7)
    ax2.errorbar(
        steps,
        [r["auc_mean"] for r in rows],
        yerr=[r["auc_sd"] for r in rows],
        marker="o",
        label=f"{series['strategy']} (mean +- sd over seeds)",
    )
    ax2.axhline(baseline_auc, color="grey", ls="--", label="none (real data only)")
    ax2.set_xlabel("synthesizer training step")
    ax2.set_ylabel("test AUC")
    ax2.legend(fontsize=7)
    fig.suptitle("Fidelity vs usefulness over synthesizer checkpoints", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def run_series(config: ExperimentConfig, prepared: PreparedData, progress: bool = True) -> dict | None:
    """Train what is missing (the snapshots, the series' units), measure every snapshot and write
    ``<out>/series.json`` and ``series.png``; the results, or None when the config has no series.
    Needs the finished ``none`` units (the baseline AUC and the fidelity features)."""
    if not config.series:
        return None
    steps = sorted(set(config.series["snapshots"]))
    strategy = config.series.get("strategy", "synthetic")
    seeds = tuple(config.series.get("seeds", config.seeds))
    model = Path(config.series.get("model", config.out / "series" / "synthesizer"))
    if not all((snapshot_dir(model, s) / "model_card.json").is_file() for s in steps):
        train_synthesizer(
            synthesizer_settings(
                config,
                prepared.split_manifest,
                model,
                max_steps=max(steps),
                snapshot_steps=tuple(steps),
                progress=progress,
            )
        )
    count = synthetic_count(config, prepared.split_manifest)
    out: dict = {"strategy": strategy, "seeds": list(seeds), "synthesizer": model.name, "steps": {}}
    for step in steps:
        tag = f"series/step-{step:06d}"
        manifest = balance_dataset(
            balance_settings(
                config,
                prepared.split_manifest,
                snapshot_dir(model, step),
                config.out / tag / "balanced",
                count,
                progress,
            )
        )
        units = [Unit(strategy, seed, tag) for seed in seeds]
        run_units(config, manifest, units, progress=progress)
        summary = summarize_strategy([json.loads((u.folder(config.out) / SCORES).read_text()) for u in units])
        fidelity = fidelity_step(config, manifest, tsne_name=None)
        out["steps"][str(step)] = {
            "auc_mean": summary["auc_mean"],
            "auc_sd": summary["auc_sd"],
            "auc_per_seed": summary["auc_per_seed"],
            "ensemble_auc": summary["ensemble_auc"],
            "kid_synthetic_vs_real_lesion": fidelity["kid_synthetic_vs_real_lesion"],
            "kid_synthetic_vs_real_normal": fidelity["kid_synthetic_vs_real_normal"],
        }
    baseline = [json.loads((Unit("none", s).folder(config.out) / SCORES).read_text()) for s in config.seeds]
    baseline_auc = summarize_strategy(baseline)["auc_mean"]
    out["baseline_auc_mean"] = baseline_auc
    atomic_write_bytes(config.out / "series.png", series_figure(out, baseline_auc))
    # In step order (the report's table follows it), not atomic_write_json's sorted keys.
    atomic_write_bytes(config.out / SERIES_RESULTS, (json.dumps(out, indent=2) + "\n").encode())
    return out
