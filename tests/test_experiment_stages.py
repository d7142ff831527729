"""The experiment's stages do what their names say (models/experiment/): the units stage owns
``run_units``, the checkpoint series is a stage of its own that writes series.json, and the aggregate
only reads results (it never trains a synthesizer or a classifier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import LesionsynthError
from models.experiment import aggregate
from models.experiment.aggregate import SERIES_RESULTS, read_series
from models.experiment.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path, **overrides) -> ExperimentConfig:
    values = dict(
        name="t",
        manifest=tmp_path / "manifest.csv",
        out=tmp_path,
        positive_label="lesion",
        normal_label="normal",
        seeds=(0, 1),
    )
    return ExperimentConfig(**(values | overrides))


def write_series(tmp_path, steps, strategy="synthetic", seeds=(0, 1)) -> dict:
    series = {"strategy": strategy, "seeds": list(seeds), "steps": {str(s): {"auc_mean": 0.5} for s in steps}}
    (tmp_path / SERIES_RESULTS).write_text(json.dumps(series))
    return series


def test_the_aggregate_reads_the_series_stages_results_and_refuses_missing_or_stale_ones(tmp_path):
    assert read_series(config(tmp_path)) is None  # no series in the config: nothing to read
    with_series = config(tmp_path, series={"snapshots": [8, 4]})
    with pytest.raises(LesionsynthError, match="checkpoint series is not finished"):
        read_series(with_series)
    write_series(tmp_path, [4, 16])  # made for other snapshots
    with pytest.raises(LesionsynthError, match="made for another series"):
        read_series(with_series)
    write_series(tmp_path, [4, 8], seeds=[0])  # other seeds
    with pytest.raises(LesionsynthError, match="made for another series"):
        read_series(with_series)
    expected = write_series(tmp_path, [4, 8])
    assert read_series(with_series) == expected


def test_the_aggregate_stage_trains_nothing():
    names = vars(aggregate)
    assert not {"train_synthesizer", "train_classifier", "run_units", "run_unit", "run_series"} & set(names)


def test_units_and_series_do_not_import_the_runner():
    """run_units lives with the units: series imports it from there, so no module imports the runner
    back (the runner only puts the stages in order)."""
    code = (
        "import sys, models.experiment.series, models.experiment.aggregate; "
        "from models.experiment.units import run_units; "
        "print('models.experiment.runner' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
