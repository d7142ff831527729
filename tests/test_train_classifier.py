"""Classifier training: every balancing strategy on demo data (tiny settings), threshold, resume, errors."""

import json

import pytest
import torch

from models.balance import BalanceSettings, balance_dataset
from models.checkpoints import latest_checkpoint
from models.classifier import train as train_module
from models.classifier.balancing import STRATEGIES, Strategy
from models.classifier.config import ClassifierConfig
from models.classifier.folder import load_classifier
from models.classifier.train import ClassifierTrainSettings, train_classifier
from models.data.manifest import load_manifest
from models.errors import ConfigError, ParameterError

TINY = ClassifierConfig(arch="resnet18", image_size=32)


def settings(manifest, out, **overrides):
    values = dict(
        manifest=manifest,
        positive_label="lesion",
        out=out,
        **TINY.to_dict(),
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


class Died(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_resume_continues_to_the_same_model(tmp_path, demo_manifest, monkeypatch):
    straight = train_classifier(settings(demo_manifest, tmp_path / "a", epochs=3))
    assert not (tmp_path / "a" / "checkpoints").exists()  # a finished run keeps no checkpoints

    partial = tmp_path / "b"
    real_save = train_module.save_checkpoint

    def save_then_die_after_epoch_2(root, step, *args, **kwargs):
        written = real_save(root, step, *args, **kwargs)
        if step == 2:
            raise Died
        return written

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die_after_epoch_2)
    with pytest.raises(Died):
        train_classifier(settings(demo_manifest, partial, epochs=3))
    monkeypatch.undo()
    assert not (partial / "model_card.json").exists()
    assert latest_checkpoint(partial / "checkpoints").name == "step-000002"

    resumed = train_classifier(settings(demo_manifest, partial, epochs=3, resume=True))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][-1]["train_loss"] == pytest.approx(
        straight["history"][-1]["train_loss"], rel=1e-4
    )
    assert resumed["threshold"] == pytest.approx(straight["threshold"], rel=1e-4)
    assert not (partial / "checkpoints").exists()


def test_errors(tmp_path, demo_manifest):
    with pytest.raises(ConfigError, match="needs synthetic rows"):
        train_classifier(settings(demo_manifest, tmp_path / "x", balance="synthetic"))
    with pytest.raises(ConfigError, match="'melanoma' does not occur"):
        train_classifier(settings(demo_manifest, tmp_path / "y", positive_label="melanoma"))
    with pytest.raises(ParameterError, match="arch must be one of resnet18, resnet34, resnet50, resnet101"):
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
