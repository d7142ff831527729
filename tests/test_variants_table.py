"""The variants table reads what each run measured (issue 11): cost, fidelity, utility per variant."""

import json

from models.experiment.variants import markdown, variant_row


def comparison(diff):
    return {
        "ensemble_auc_difference": diff,
        "ensemble_delong_p": 0.2,
        "paired_t_p": 0.3,
        "seeds_better": 1,
        "seeds_compared": 5,
    }


def fake_run(root, *, acceptance=None, anchored=False):
    run = root / "runs" / "exp"
    (run / "balanced").mkdir(parents=True)
    (run / "synthesizer").mkdir()
    kid = {"mean": 2.0, "ci95": [1.0, 3.0]}
    results = {
        "meta": {"synthesizer": "../runs/exp/synthesizer"},
        "fidelity": {
            "kid_synthetic_vs_real_lesion": kid,
            "kid_synthetic_vs_real_normal": {"mean": 6.0, "ci95": [4.0, 8.0]},
            "class_anchored": anchored,
        },
        "strategies": {
            "none": {"ensemble_auc": 0.6},
            "oversample": {"ensemble_auc": 0.62},
            "synthetic": {
                "ensemble_auc": 0.64,
                "ensemble_auc_ci95": [0.6, 0.68],
                "ensemble_sens_at_spec90": 0.3,
                "n_synthetic_train": 200,
                "vs_baseline": comparison(0.04),
            },
        },
        "primary": {"against_resolved": "oversample", **comparison(0.02)},
    }
    (run / "results.json").write_text(json.dumps(results))
    card = {"config": {"resolution": 64, "num_classes": 0}, "train_seconds": 100.0, "steps": 1200}
    (run / "synthesizer" / "model_card.json").write_text(json.dumps(card))
    (run / "balanced" / "balance.json").write_text(json.dumps({"steps": 20}))
    if acceptance:
        (run / "balanced" / "acceptance.json").write_text(json.dumps(acceptance))
    return run


def test_a_filtered_run_pays_for_its_rejected_candidates(tmp_path):
    run = fake_run(
        tmp_path, acceptance={"tried": 400, "kept": 200, "accepted": 210, "acceptance_rate": 0.525}
    )
    row = variant_row("filtered", run, configs=tmp_path / "experiments")
    assert row["train_seconds"] == 100 and row["train_steps"] == 1200
    assert row["unet_calls_per_kept_image"] == 40  # 20 steps x 2 candidates per kept image
    assert row["acceptance_rate"] == 0.525 and row["vs_primary"]["ensemble_auc_difference"] == 0.02
    text = markdown([row], "t", "cmd")
    assert "| filtered | 64 | 100 (1200) | 40 | 52% | 2.00 [1.00, 3.00] | 6.00 [4.00, 8.00] | no |" in text
    assert "`none` AUC 0.600, `oversample` AUC 0.620" in text


def test_pretraining_time_and_steps_are_counted(tmp_path):
    run = fake_run(tmp_path, anchored=True)
    (run / "synthesizer-pretrain").mkdir()
    (run / "synthesizer-pretrain" / "model_card.json").write_text(
        json.dumps({"train_seconds": 50.4, "steps": 2400})
    )
    row = variant_row("pretrained", run, configs=tmp_path / "experiments")
    assert row["train_seconds"] == 150 and row["train_steps"] == 3600
    assert row["unet_calls_per_kept_image"] == 20 and row["acceptance_rate"] is None
    assert "| yes |" in markdown([row], "t", "cmd")


def test_a_run_without_a_synthesizer_is_a_row_too(tmp_path):
    run = fake_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["meta"]["synthesizer"] = None  # the copy-paste control
    (run / "results.json").write_text(json.dumps(results))
    row = variant_row("copy-paste", run, configs=tmp_path / "experiments")
    assert row["resolution"] is None and row["train_seconds"] == 0
    assert "| copy-paste | - | 0 (0) | 0 |" in markdown([row], "t", "cmd")
