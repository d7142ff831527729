"""The saved synthesizer folder: what ``train-synthesizer`` writes and everything else loads.

    model_index.json              diffusers' pipeline index (DDPMPipeline: unet + scheduler)
    unet/config.json              UNet2DModel config           } written by diffusers' save_pretrained,
    unet/diffusion_pytorch_model.safetensors (EMA weights)     } so diffusers itself can load the folder
    scheduler/scheduler_config.json  the DDPM training schedule }
    model_card.json               lesionsynth's record: kind, version, config, data hash, loss curve,
                                  package versions, and the sha256 of every file above
    shape_bank.safetensors/.json  the lesion class's train mask shapes for mask proposals (models/masks/);
                                  hashed in the card, but not part of the model version (the weights' sha)
    checkpoints/                  training state for --resume (not needed for inference)

``model_card.json`` is written last and is the folder's commit marker: a folder without it is not a
synthesizer, and a file whose sha256 differs from the card is refused (a partial copy, a corrupted disk,
or tampering), with a message saying which file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from models.artifacts import storage_guard
from models.diffusion.config import SynthesizerConfig
from models.errors import ModelFolderError
from models.masks.bank import BANK_FILES
from models.model_card import CARD_NAME, verify_files, write_card
from models.model_card import read_card as read_model_card

KIND = "lesionsynth.synthesizer"
FORMAT_VERSION = 1
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
HASHED_FILES = [WEIGHTS, "unet/config.json", "scheduler/scheduler_config.json", "model_index.json"]

__all__ = ["CARD_NAME", "LoadedSynthesizer", "load_synthesizer", "read_card", "write_synthesizer"]


def write_synthesizer(
    out: Path,
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    config: SynthesizerConfig,
    card: dict,
    bank=None,
) -> dict:
    """Write the inference folder into ``out`` (keeping ``out/checkpoints``); return the final card.

    The card is removed first and written last, so at every moment the folder is either a complete,
    verifiable synthesizer or visibly not one. ``bank``: a models.masks ShapeBank written beside the
    weights (hashed in the card; the model version stays the weights' sha).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_NAME).unlink(missing_ok=True)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with storage_guard("the synthesizer folder", cleanup=staging):
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(staging, safe_serialization=True)
    for name in ("unet", "scheduler", "model_index.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    shutil.rmtree(staging, ignore_errors=True)
    files = list(HASHED_FILES)
    if bank is not None:
        bank.save(out)
        files += list(BANK_FILES)
    card = {**card, "kind": KIND, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    return write_card(out, card, files, version_file=WEIGHTS)


@dataclass
class LoadedSynthesizer:
    unet: UNet2DModel
    scheduler_config: dict
    config: SynthesizerConfig
    card: dict

    @property
    def model_version(self) -> str:
        return self.card["model_version"]


def read_card(folder: str | Path) -> dict:
    return read_model_card(
        folder, KIND, FORMAT_VERSION, hint="train one with `lesionsynth train-synthesizer`"
    )


def load_synthesizer(
    folder: str | Path, device: str | torch.device = "cpu", verify: bool = True
) -> LoadedSynthesizer:
    folder = Path(folder)
    card = read_card(folder)
    if verify:
        verify_files(folder, card)
    config = SynthesizerConfig.from_dict(card["config"])
    unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True).to(device).eval()
    if unet.config.in_channels != config.in_channels:
        raise ModelFolderError(
            f"{folder}: UNet has {unet.config.in_channels} input channels, card says {config.in_channels}"
        )
    scheduler_config = dict(DDPMScheduler.load_config(folder / "scheduler"))
    return LoadedSynthesizer(unet=unet, scheduler_config=scheduler_config, config=config, card=card)
