"""The saved classifier folder.

model.safetensors   the weights of the epoch with the best validation AUC
config.json         ClassifierConfig (architecture + preprocessing)
model_card.json     kind, version, positive label, the operating threshold chosen on ``val`` (and the
                    target sensitivity it was chosen for), validation figures, training history,
                    strategy, seed, data hash, preprocessing, sha256 of every file
checkpoints/        training state for --resume
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from models.artifacts import atomic_write_json, atomic_writer
from models.classifier.config import ClassifierConfig, build_classifier
from models.model_card import CARD_NAME, verify_files, write_card
from models.model_card import read_card as read_model_card

KIND = "lesionsynth.classifier"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def write_classifier(
    out: Path, state_dict: dict[str, torch.Tensor], config: ClassifierConfig, card: dict
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_NAME).unlink(missing_ok=True)
    with atomic_writer(out / WEIGHTS) as fh:
        fh.write(save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}))
    atomic_write_json(out / "config.json", config.to_dict())
    card = {
        **card,
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "preprocessing": config.preprocessing(),
    }
    return write_card(out, card, [WEIGHTS, "config.json"], version_file=WEIGHTS)


@dataclass
class LoadedClassifier:
    net: torch.nn.Module
    config: ClassifierConfig
    card: dict

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    @property
    def model_version(self) -> str:
        return self.card["model_version"]


def read_card(folder: str | Path) -> dict:
    return read_model_card(folder, KIND, FORMAT_VERSION, hint="train one with `lesionsynth train-classifier`")


def load_classifier(
    folder: str | Path, device: str | torch.device = "cpu", verify: bool = True
) -> LoadedClassifier:
    folder = Path(folder)
    card = read_card(folder)
    if verify:
        verify_files(folder, card)
    config = ClassifierConfig.from_dict(json.loads((folder / "config.json").read_text()))
    net = build_classifier(config)
    net.load_state_dict(load_file(folder / WEIGHTS))
    return LoadedClassifier(net=net.to(device).eval(), config=config, card=card)
