"""Pre-training on every region, then fine-tuning on the lesion regions (issue 11, variant 2; paper 002)."""

import pytest
import torch

from models.diffusion.folder import load_synthesizer, read_card
from models.diffusion.inpaint import LesionInpainter
from models.diffusion.train import train_synthesizer
from models.errors import ConfigError
from models.experiment.config import load_config
from models.experiment.prepare import prepare_split, prepare_synthesizer
from tests.conftest import experiment_yaml, tiny_settings
from tests.test_class_conditional import toy_manifest


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    manifest = toy_manifest(root / "data", n_per_class=6)
    out = root / "pretrain"
    card = train_synthesizer(tiny_settings(manifest, out, all_regions=True, max_steps=8))
    return manifest, out, card


def test_pretraining_learns_every_region_and_says_so(pretrained):
    manifest, folder, card = pretrained
    assert card["all_regions"] is True
    assert card["images_used"] == 12  # 6 normal + 6 lesion regions; a lesion-only run would use 6
    assert len(card["image_rows"]) == 12


def test_fine_tuned_folder_starts_from_the_pretrained_weights_and_round_trips(pretrained, tmp_path):
    manifest, start, start_card = pretrained
    # With a zero learning rate the weights never move, so the exported EMA equals the start exactly.
    # Users cannot ask for 0 (the recipe's range is (0, 1]); the test sets it past the check.
    frozen = tmp_path / "frozen"
    settings = tiny_settings(manifest, frozen, init_from=start, max_steps=4)
    object.__setattr__(settings, "learning_rate", 0.0)
    train_synthesizer(settings)
    a, b = load_synthesizer(start).unet.state_dict(), load_synthesizer(frozen).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    tuned = tmp_path / "tuned"
    card = train_synthesizer(tiny_settings(manifest, tuned, init_from=start, max_steps=8))
    assert card["init_from"] == {
        "model_version": start_card["model_version"],
        "steps": 8,
        "images_used": 12,
        "all_regions": True,
    }
    assert card["images_used"] == 6 and "all_regions" not in card  # the lesion regions only
    weights = load_synthesizer(tuned).unet.state_dict()
    assert any(not torch.equal(a[k], weights[k]) for k in a)  # it did learn
    assert read_card(tuned)["model_version"] != start_card["model_version"]
    # It samples like any synthesizer folder.
    inpainter = LesionInpainter.from_pretrained(tuned, device="cpu")
    out = inpainter.sample_crops(torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32), [0])
    assert out.shape == (1, 3, 32, 32)


def test_a_resume_from_another_start_is_refused(pretrained, tmp_path):
    manifest, start, _ = pretrained
    out = tmp_path / "tuned"
    train_synthesizer(tiny_settings(manifest, out, init_from=start, max_steps=8, checkpoint_every=4))
    (out / "model_card.json").unlink()  # as if the run had stopped after its checkpoint
    with pytest.raises(ConfigError, match="init_from"):
        train_synthesizer(tiny_settings(manifest, out, max_steps=12, checkpoint_every=4, resume=True))


def test_fine_tuning_a_different_architecture_is_refused(pretrained, tmp_path):
    manifest, start, _ = pretrained
    with pytest.raises(ConfigError, match="mask_conditioning"):
        train_synthesizer(tiny_settings(manifest, tmp_path / "x", init_from=start, mask_conditioning=True))


def test_all_regions_is_refused_for_a_conditional_synthesizer(pretrained, tmp_path):
    manifest, _, _ = pretrained
    with pytest.raises(ConfigError, match="all-regions"):
        tiny_settings(manifest, tmp_path / "x", num_classes=2, normal_label="normal", all_regions=True)


def pretrain_yaml(tmp_path, manifest, synthesizer):
    return experiment_yaml(
        tmp_path, manifest, synthesizer=synthesizer, classifier={"arch": "resnet18", "image_size": 32}
    )


def test_experiment_pretrains_then_fine_tunes(pretrained, tmp_path):
    manifest, _, _ = pretrained
    synth = {
        "resolution": 32,
        "preset": "tiny",
        "max_steps": 4,
        "batch_size": 4,
        "pretrain": {"max_steps": 6},
    }
    config = load_config(pretrain_yaml(tmp_path, manifest, synth))
    model = prepare_synthesizer(config, prepare_split(config, progress=False), progress=False)
    start = read_card(config.out / "synthesizer-pretrain")
    assert start["all_regions"] is True and start["steps"] == 6
    card = read_card(model)
    assert card["steps"] == 4 and card["init_from"]["model_version"] == start["model_version"]


@pytest.mark.parametrize(
    "pretrain, extra, message",
    [
        ({"max_steps": 0}, {}, "positive integer"),
        ({"steps": 10}, {}, "max_steps: N"),
        ({"max_steps": 10}, {"num_classes": 2}, "unconditional"),
    ],
)
def test_bad_pretrain_settings_are_refused(pretrained, tmp_path, pretrain, extra, message):
    manifest, _, _ = pretrained
    path = pretrain_yaml(tmp_path, manifest, {"pretrain": pretrain, **extra})
    with pytest.raises(ConfigError, match=message):
        load_config(path)
