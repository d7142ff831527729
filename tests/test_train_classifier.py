"""Classifier training: every balancing strategy on demo data (tiny settings), threshold, resume, errors."""

import json
import shutil

import pytest
import torch

from models.balance import BalanceSettings, balance_dataset
from models.classifier.balancing import STRATEGIES, Strategy
from models.classifier.config import ClassifierConfig
from models.classifier.folder import load_classifier
from models.classifier.train import ClassifierTrainSettings, train_classifier
from models.data.manifest import load_manifest
from models.errors import ConfigError

TINY = ClassifierConfig(arch="resnet18", image_size=32)


def settings(manifest, out, **overrides):
    values = dict(
        manifest=manifest,
        positive_label="lesion",
        out=out,
        config=TINY,
        epochs=2,
        batch_size=16,
        patience=5,
        seed=0,
        progress=False,
        device="cpu",
    )
    values.update(overrides)
    return ClassifierTrainSettings(**values)


@pytest.fixture(scope="module")
def balanced_manifest(tmp_path_factory, demo_manifest, tiny_synth):
    out = tmp_path_factory.mktemp("balanced")
    return balance_dataset(
        BalanceSettings(
            manifest=demo_manifest,
            model=tiny_synth,
            normal_label="normal",
            lesion_label="lesion",
            count=6,
            out=out,
            steps=3,
            progress=False,
        )
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_and_saves_a_threshold(tmp_path, balanced_manifest, strategy):
    card = train_classifier(settings(balanced_manifest, tmp_path / strategy, balance=strategy))
    loaded = load_classifier(tmp_path / strategy)
    assert loaded.card["balance"] == strategy and 0 <= loaded.threshold <= 1
    assert card["epochs_run"] == 2 and len(card["history"]) == 2
    n_synthetic = card["train"]["n_synthetic"]
    assert (n_synthetic == 6) if strategy.startswith("synthetic") else (n_synthetic == 0)
    assert card["preprocessing"]["size"] == [32, 32] and card["preprocessing"]["layout"] == "NCHW"
    assert card["val"]["sensitivity"] >= 0.9  # the validated threshold reaches the target on val


def test_strategy_epochs_and_weights():
    labels = torch.tensor([1.0] * 4 + [0.0] * 16)
    g = torch.Generator().manual_seed(0)
    over = Strategy("oversample").epoch_indices(labels, g)
    assert len(over) == 32 and labels[over].sum() == 16
    assert Strategy("weighted-loss").pos_weight(labels) == 4.0
    assert Strategy("none").pos_weight(labels) == 1.0
    sampled = Strategy("weighted-sampler").epoch_indices(labels, torch.Generator().manual_seed(1))
    assert len(sampled) == 20 and 5 <= labels[sampled].sum() <= 15  # ~half positives instead of 20%
    synthetic = torch.tensor([False] * 18 + [True] * 2)
    assert Strategy("none").pool_mask(synthetic).sum() == 18
    assert Strategy("synthetic").pool_mask(synthetic).sum() == 20
    with pytest.raises(ConfigError, match="unknown --balance"):
        Strategy("smote")


def test_resume_continues_to_the_same_model(tmp_path, demo_manifest):
    straight = train_classifier(settings(demo_manifest, tmp_path / "a", epochs=3))
    partial = tmp_path / "b"
    train_classifier(settings(demo_manifest, partial, epochs=3))
    (partial / "model_card.json").unlink()
    shutil.rmtree(sorted((partial / "checkpoints").iterdir())[-1])  # as if the process died after epoch 2
    resumed = train_classifier(settings(demo_manifest, partial, epochs=3, resume=True))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][-1]["train_loss"] == pytest.approx(
        straight["history"][-1]["train_loss"], rel=1e-4
    )
    assert resumed["threshold"] == pytest.approx(straight["threshold"], rel=1e-4)


def test_errors(tmp_path, demo_manifest):
    with pytest.raises(ConfigError, match="needs synthetic rows"):
        train_classifier(settings(demo_manifest, tmp_path / "x", balance="synthetic"))
    with pytest.raises(ConfigError, match="'melanoma' does not occur"):
        train_classifier(settings(demo_manifest, tmp_path / "y", positive_label="melanoma"))
    with pytest.raises(ConfigError, match="unknown --arch"):
        ClassifierConfig(arch="vgg16")
    train_classifier(settings(demo_manifest, tmp_path / "z", epochs=1))
    with pytest.raises(ConfigError, match="--resume"):
        train_classifier(settings(demo_manifest, tmp_path / "z", epochs=1))


def test_threshold_is_chosen_on_val_only(tmp_path, demo_manifest):
    card = train_classifier(settings(demo_manifest, tmp_path / "t", epochs=1))
    manifest = load_manifest(demo_manifest, check_files=False)
    assert card["val"]["n"] == len(manifest.rows_in("val"))
    assert card["train"]["n_pool"] == len(manifest.rows_in("train"))
    assert json.loads((tmp_path / "t" / "model_card.json").read_text())["threshold"] == card["threshold"]
