"""A figure of what an acceptance filter did (issue 11, variant 4): the filter's P(lesion) of every
candidate it judged, beside its scores of real val regions of both classes, and the threshold.

    python -m models.evaluation.acceptance_plot --run runs/experiments/isic2017-scarce-filter \\
        --out docs/results/isic2017-scarce/filter/acceptance.png

Reads ``<run>/balanced/acceptance.csv``, ``<run>/acceptance-filter`` and the run's split manifest
(``<run>/data/manifest.csv``); the val regions are only scored, never trained on.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

from models.acceptance import AcceptanceFilter
from models.artifacts import atomic_write_bytes
from models.balance import read_decisions
from models.data.manifest import load_manifest


def candidate_scores(acceptance_csv: Path) -> np.ndarray:
    """(N,) the filter's score of every candidate, in candidate order."""
    return np.array([score for _, (score, _) in sorted(read_decisions(acceptance_csv).items())])


def acceptance_figure(run: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accept = AcceptanceFilter.load(run / "acceptance-filter")
    summary = json.loads((run / "balanced" / "acceptance.json").read_text())
    manifest = load_manifest(run / "data" / "manifest.csv")
    real = {}
    for name, label in (
        ("real val melanoma-class", "lesion_label"),
        ("real val normal-class", "normal_label"),
    ):
        rows = manifest.rows_in("val", accept.card[label])
        real[name] = accept.score(*zip(*[r.load() for r in rows], strict=True))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(0, 1, 26)
    ax.hist(
        candidate_scores(run / "balanced" / "acceptance.csv"), bins, alpha=0.6, label="synthetic candidates"
    )
    for name, scores in real.items():
        ax.hist(scores, bins, histtype="step", linewidth=2, density=False, label=f"{name} ({len(scores)})")
    ax.axvline(accept.threshold, color="k", linestyle="--", label=f"threshold {accept.threshold:g}")
    ax.set_xlabel("acceptance filter's P(lesion) of the masked region")
    ax.set_ylabel("regions")
    ax.set_title(
        f"accepted {summary['accepted']} of {summary['tried']} candidates ({summary['acceptance_rate']:.0%}); "
        f"filter val AUC {accept.card.get('val_auc')}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="an experiment folder with balance.filter")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    print(f"wrote {acceptance_figure(args.run, args.out)}")


if __name__ == "__main__":
    main()
