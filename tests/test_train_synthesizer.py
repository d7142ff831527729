"""Training the synthesizer: output format, model card, resume and the split discipline."""

import json

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from safetensors.torch import load_file

from models.checkpoints import list_checkpoints
from models.data.manifest import load_manifest
from models.diffusion.config import SynthesizerConfig
from models.diffusion.folder import load_synthesizer
from models.diffusion.train import train_synthesizer
from models.errors import ConfigError, ParameterError
from tests.conftest import TINY_STEPS, tiny_settings


def test_output_is_a_diffusers_folder_with_a_model_card(tiny_synth, demo_manifest):
    unet = UNet2DModel.from_pretrained(tiny_synth / "unet")
    assert unet.config.in_channels == 3 and unet.config.sample_size == 32
    pipe = DDPMPipeline.from_pretrained(tiny_synth)
    assert pipe.scheduler.config.num_train_timesteps == 1000
    card = json.loads((tiny_synth / "model_card.json").read_text())
    manifest = load_manifest(demo_manifest, check_files=False)
    assert card["kind"] == "lesionsynth.synthesizer"
    assert card["steps"] == TINY_STEPS and card["resolution"] == 32
    assert card["manifest_sha256"] == manifest.sha256()
    assert len(card["loss_curve"]) == TINY_STEPS // 4
    assert all(loss > 0 for _, loss in card["loss_curve"])
    assert {"torch", "diffusers", "lesionsynth", "python"} <= set(card["versions"])
    # Only train rows of the lesion class were used: never val, test or the normal class.
    train_lesion = {r.number for r in manifest.rows_in("train", "lesion")}
    assert set(card["image_rows"]) == train_lesion
    assert card["images_used"] == len(train_lesion)


def test_resume_continues_exactly(tmp_path, demo_manifest, tiny_synth):
    """Train 16 steps, 'crash', resume to 24: the weights equal an uninterrupted 24-step run."""
    out = tmp_path / "resumed"
    train_synthesizer(tiny_settings(demo_manifest, out, max_steps=16))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000008", "step-000016"]
    # Lose the final folder, as if the process died after the last checkpoint.
    (out / "model_card.json").unlink()
    card = train_synthesizer(tiny_settings(demo_manifest, out, resume=True))
    assert card["steps"] == TINY_STEPS
    resumed = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    straight = load_file(tiny_synth / "unet" / "diffusion_pytorch_model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    reference = json.loads((tiny_synth / "model_card.json").read_text())
    assert [s for s, _ in card["loss_curve"]] == [s for s, _ in reference["loss_curve"]]
    assert [v for _, v in card["loss_curve"]] == pytest.approx(
        [v for _, v in reference["loss_curve"]], rel=1e-5
    )


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, demo_manifest):
    out = tmp_path / "run"
    train_synthesizer(tiny_settings(demo_manifest, out, max_steps=8))
    with pytest.raises(ConfigError, match="--resume"):
        train_synthesizer(tiny_settings(demo_manifest, out, max_steps=8))
    with pytest.raises(ConfigError, match="different batch_size"):
        train_synthesizer(tiny_settings(demo_manifest, out, max_steps=16, batch_size=2, resume=True))


def test_mask_conditioned_unet_has_four_inputs(tmp_path, demo_manifest):
    out = tmp_path / "cond"
    train_synthesizer(tiny_settings(demo_manifest, out, mask_conditioning=True, max_steps=4))
    loaded = load_synthesizer(out)
    assert loaded.unet.config.in_channels == 4 and loaded.config.mask_conditioning


def test_bad_settings(tmp_path, demo_manifest):
    with pytest.raises(ConfigError, match="label 'melanoma' does not occur"):
        train_synthesizer(tiny_settings(demo_manifest, tmp_path / "a", lesion_label="melanoma"))
    with pytest.raises(ParameterError, match=r"max_steps must be in \[1, 10000000\], got 0"):
        tiny_settings(demo_manifest, tmp_path / "b", max_steps=0)
    with pytest.raises(ParameterError, match="resolution must be one of 32, 64, 96, 128, 256, got 48"):
        SynthesizerConfig(resolution=48)
    with pytest.raises(ParameterError, match="preset must be one of tiny, small, base, got 'huge'"):
        SynthesizerConfig(preset="huge")


def test_snapshots_are_full_synthesizers(tmp_path, demo_manifest):
    out = tmp_path / "snap"
    train_synthesizer(tiny_settings(demo_manifest, out, max_steps=12, snapshot_steps=(4, 12)))
    for step in (4, 12):
        loaded = load_synthesizer(out / "snapshots" / f"step-{step:06d}")
        assert loaded.card["steps"] == step
    assert not (out / "snapshots" / "step-000008").exists()
    final = json.loads((out / "model_card.json").read_text())
    snap = json.loads((out / "snapshots" / "step-000012" / "model_card.json").read_text())
    assert final["files"] == snap["files"]  # the last snapshot is the final model
