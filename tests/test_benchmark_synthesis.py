"""The synthesis benchmark runs end to end (tiny model, few crops) and reports what the issue asks for.

This checks the benchmark's machinery, not its figures: those come from `make bench` on PH2 (docs/).
"""

import json

from loadtests.benchmarks import synthesis_vs_repaint


def test_benchmark_reports_calls_times_and_quality(tmp_path, tiny_synth, demo_manifest):
    result = synthesis_vs_repaint.main(
        [
            "--model",
            str(tiny_synth),
            "--manifest",
            str(demo_manifest),
            "--n",
            "3",
            "--batch",
            "3",
            "--feature-epochs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "synthesis.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for key in (
        "repaint_unet_calls",
        "ours_unet_calls",
        "repaint_seconds_per_image",
        "ours_seconds_per_image",
    ):
        assert saved[key] > 0
    assert saved["ours_unet_calls"] == 6  # the default: 6 DPM-Solver++(2M) SDE steps from pure noise
    assert saved["variants"]["ours_resample2"]["unet_calls"] == 11  # (6 - 1) x 2 + 1
    assert saved["variants"]["ours_ddim_partial"]["unet_calls"] == 20  # pinned to DDIM 25: round(25 x 0.8)
    # RePaint's default schedule: 250 steps with 10 resampling jumps of 10: about 2,400 calls per image.
    assert 2300 <= saved["repaint_unet_calls"] <= 2500
    assert saved["unet_call_ratio"] >= 40
    assert set(saved["kid_vs_heldout_lesions"]) == {
        "ours",
        "ours_resample2",
        "ours_ddim_partial",
        "repaint",
        "untouched_normal",
        "train_lesions",
    }
    assert "fewer UNet calls" in (tmp_path / "synthesis.md").read_text()


def test_design_choices_measurement_runs(tmp_path, tiny_synth, demo_manifest):
    from loadtests.benchmarks import design_choices
    from models.diffusion.train import train_synthesizer
    from tests.conftest import tiny_settings

    cond = tmp_path / "cond"
    train_synthesizer(tiny_settings(demo_manifest, cond, mask_conditioning=True, max_steps=8))
    result = design_choices.main(
        [
            "--uncond",
            str(tiny_synth),
            "--cond",
            str(cond),
            "--manifest",
            str(demo_manifest),
            "--feature-epochs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    for entry in result["models"].values():
        assert entry["heldout_denoising_loss"] > 0
        assert 0 <= entry["defaults"]["mean_p_lesion"] <= 1
    assert list(result["models"]["unconditional"]["sweep"]) == list(design_choices.SWEEP)
    assert result["models"]["mask-conditioned"]["sweep"] == {}
    assert "held-out denoising loss" in (tmp_path / "design_choices.md").read_text()
