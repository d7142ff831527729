"""The balancing experiment end to end on demo data (tiny settings), its statistics, rerun and errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lesionsynth.cli import app
from models.errors import ConfigError, ParameterError
from models.experiment.aggregate import aggregate
from models.experiment.config import load_config
from models.experiment.runner import run_experiment
from models.experiment.units import SCORES, all_units
from tests.conftest import experiment_yaml


def write_config(tmp_path, demo_manifest, tiny_synth, **overrides):
    config = {
        "name": "demo-tiny",
        "synthesizer": {"model": str(tiny_synth)},
        "balance": {"count": "parity", "steps": 3},
        "classifier": {"arch": "resnet18", "image_size": 32, "epochs": 2, "batch_size": 16},
        "seeds": [0, 1],
        "workers": 2,
    }
    return experiment_yaml(tmp_path, demo_manifest, **(config | overrides))


def test_every_strategy_end_to_end_then_rerun_skips(tmp_path, demo_manifest, tiny_synth):
    config = load_config(write_config(tmp_path, demo_manifest, tiny_synth))
    results = run_experiment(config, progress=False)
    out = config.out
    assert set(results["strategies"]) == set(config.strategies) and len(config.strategies) == 6
    for name, s in results["strategies"].items():
        assert s["n_seeds"] == 2 and 0 <= s["auc_mean"] <= 1
        assert ("vs_baseline" in s) == (name != "none")
    synth = results["strategies"]["synthetic"]
    assert synth["n_synthetic_train"] > 0 and results["strategies"]["none"]["n_synthetic_train"] == 0
    for name in ("report.md", "results.json", "roc.png", "tsne.png"):
        assert (out / name).stat().st_size > 0
    fidelity = results["fidelity"]
    assert fidelity["n"]["synthetic"] == synth["n_synthetic_train"]
    assert {"kid_synthetic_vs_real_lesion", "kid_synthetic_vs_real_normal"} <= set(fidelity)
    report = (out / "report.md").read_text()
    assert "synthetic+weighted" in report and "DeLong" in report
    # Test rows only, and the same ones for every unit; never a synthetic row.
    unit_files = sorted(out.glob("units/*/seed-*/" + SCORES))
    assert len(unit_files) == 12
    rows = {tuple(json.loads(p.read_text())["test_rows"]) for p in unit_files}
    assert len(rows) == 1
    # A rerun trains nothing: finished units are skipped.
    before = {p: p.stat().st_mtime_ns for p in unit_files}
    run_experiment(config, progress=False)
    assert {p: p.stat().st_mtime_ns for p in unit_files} == before


def test_single_unit_and_aggregate_only_via_cli(tmp_path, demo_manifest, tiny_synth):
    path = write_config(
        tmp_path, demo_manifest, tiny_synth, strategies=["none", "weighted-loss"], seeds=[0], workers=1
    )
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "--config", str(path), "--aggregate-only"])
    assert result.exit_code == 2 and "not finished" in result.output
    for index in (0, 1):
        result = runner.invoke(app, ["experiment", "--config", str(path), "--unit-index", str(index)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["experiment", "--config", str(path), "--unit-index", "2"])
    assert result.exit_code == 2 and "--unit-index must be in [0, 1]" in result.output
    result = runner.invoke(app, ["experiment", "--config", str(path), "--aggregate-only"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exp" / "report.md").is_file()


def fake_unit(strategy, seed, labels, scores, threshold=0.5, val_auc=0.5):
    return {
        "unit": f"{strategy}/seed-{seed}",
        "strategy": strategy,
        "seed": seed,
        "labels": labels,
        "scores": list(scores),
        "threshold": threshold,
        "test_rows": list(range(len(labels))),
        "val": {"auc": val_auc},
        "epochs_run": 1,
        "train": {"n_synthetic": 0},
    }


def test_aggregate_statistics_on_known_scores():
    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.random(200) < 0.25]
    y = np.array(labels)
    units = []
    for seed in range(3):
        units.append(fake_unit("none", seed, labels, rng.random(200)))  # chance
        units.append(fake_unit("good", seed, labels, 0.6 * y + rng.random(200)))  # informative
    results = aggregate(units)
    none, good = results["strategies"]["none"], results["strategies"]["good"]
    assert abs(none["auc_mean"] - 0.5) < 0.1 and good["auc_mean"] > 0.75
    assert good["vs_baseline"]["ensemble_delong_p"] < 1e-6
    assert good["vs_baseline"]["seeds_better"] == 3
    assert good["auc_mean_ci95"][0] < good["auc_mean"] < good["auc_mean_ci95"][1]
    assert len(good["roc"]["tpr_mean"]) == 101 and good["roc"]["tpr_mean"][-1] == 1.0
    with pytest.raises(ValueError, match="different test cases"):
        aggregate(units + [fake_unit("bad", 0, labels[:-1], rng.random(199))])


def test_config_errors(tmp_path, demo_manifest, tiny_synth):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, colour="red"))
    with pytest.raises(ConfigError, match="must include 'none'"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, strategies=["synthetic"]))
    with pytest.raises(ConfigError, match="unknown strategies"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, strategies=["none", "smote"]))
    with pytest.raises(ParameterError, match="classifier.arch must be one of resnet18, resnet34"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, classifier={"arch": "vgg"}))
    # section keys are the recipes' parameters: a typo or an out-of-range value fails at load time
    with pytest.raises(ConfigError, match="unknown key.s. in classifier: epoch;"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, classifier={"epoch": 3}))
    with pytest.raises(ConfigError, match="unknown key.s. in synthesizer: max_step;"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, synthesizer={"max_step": 3}))
    with pytest.raises(ParameterError, match=r"synthesizer.batch_size must be in \[1, 1024\], got 0"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, synthesizer={"batch_size": 0}))
    # top-level keys are declared too (models/experiment/config.py): a value out of range fails at load
    with pytest.raises(ParameterError, match=r"target_sensitivity must be in \(0, 1\], got 0"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, target_sensitivity=0))
    with pytest.raises(ParameterError, match=r"workers must be in \[1, 64\], got 0"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, workers=0))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    units = all_units(load_config(write_config(tmp_path, demo_manifest, tiny_synth)))
    assert units[0].name == "none/seed-0" and len(units) == 12


@pytest.mark.parametrize(
    "name",
    [
        "demo.yaml",
        "ph2.yaml",
        "ph2-quick.yaml",
        "ph2-gpu.yaml",
        "isic2017-scarce.yaml",
        "isic2017-donor.yaml",
        "isic2017-gpu.yaml",
    ],
)
def test_shipped_configs_parse(name):
    from tests.conftest import REPO

    config = load_config(REPO / "experiments" / name)
    assert "none" in config.strategies and config.seeds
    assert config.out.is_relative_to(REPO / "runs")


def test_series_over_synthesizer_checkpoints(tmp_path, demo_manifest, tiny_synth):
    path = write_config(
        tmp_path,
        demo_manifest,
        tiny_synth,
        strategies=["none", "synthetic"],
        seeds=[0],
        workers=1,
        synthesizer={"resolution": 32, "preset": "tiny", "max_steps": 8, "batch_size": 4},
        series={"snapshots": [4, 8], "seeds": [0, 1]},
    )
    config = load_config(path)
    results = run_experiment(config, progress=False)
    series = results["series"]
    assert list(series["steps"]) == ["4", "8"]
    for entry in series["steps"].values():
        assert len(entry["auc_per_seed"]) == 2
        assert entry["kid_synthetic_vs_real_lesion"]["subset_size"] >= 2
    assert (config.out / "series" / "synthesizer" / "snapshots" / "step-000004" / "model_card.json").is_file()
    assert (config.out / "series.png").stat().st_size > 0
    assert "Fidelity vs usefulness" in (config.out / "report.md").read_text()
    with pytest.raises(ConfigError, match="series.snapshots"):
        load_config(write_config(tmp_path, demo_manifest, tiny_synth, series={"snapshots": []}))
