"""The saved synthesizer folder: what ``train-synthesizer`` writes and everything else loads.

    model_index.json              diffusers' pipeline index (DDPMPipeline: unet + scheduler)
    unet/config.json              UNet2DModel config           } written by diffusers' save_pretrained,
    unet/diffusion_pytorch_model.safetensors (EMA weights)     } so diffusers itself can load the folder
    scheduler/scheduler_config.json  the DDPM training schedule }
    model_card.json               lesionsynth's record: kind, version, config, data hash, loss curve,
                                  package versions, and the sha256 of every file above
    checkpoints/                  training state for --resume (not needed for inference)

``model_card.json`` is written last and is the folder's commit marker: a folder without it is not a
synthesizer, and a file whose sha256 differs from the card is refused (a partial copy, a corrupted disk,
or tampering), with a message saying which file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from models import __version__
from models.artifacts import atomic_write_json, sha256_file
from models.diffusion.config import SynthesizerConfig
from models.errors import ModelFolderError

CARD_NAME = "model_card.json"
KIND = "lesionsynth.synthesizer"
FORMAT_VERSION = 1
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
HASHED_FILES = (WEIGHTS, "unet/config.json", "scheduler/scheduler_config.json", "model_index.json")


def versions() -> dict[str, str]:
    return {
        "lesionsynth": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def write_synthesizer(
    out: Path, unet: UNet2DModel, scheduler: DDPMScheduler, config: SynthesizerConfig, card: dict
) -> dict:
    """Write the inference folder into ``out`` (keeping ``out/checkpoints``); return the final card.

    The card is removed first and written last, so at every moment the folder is either a complete,
    verifiable synthesizer or visibly not one.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_NAME).unlink(missing_ok=True)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(staging, safe_serialization=True)
    for name in ("unet", "scheduler", "model_index.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    shutil.rmtree(staging, ignore_errors=True)
    files = {name: sha256_file(out / name) for name in HASHED_FILES}
    full = {
        **card,
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model_version": files[WEIGHTS][:12],
        "config": config.to_dict(),
        "files": files,
        "versions": versions(),
    }
    atomic_write_json(out / CARD_NAME, full)
    return full


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
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderError(f"model folder does not exist: {folder}")
    if not folder.is_dir():
        raise ModelFolderError(f"model path is not a folder: {folder}")
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelFolderError(
            f"{folder} is not a lesionsynth synthesizer: it has no {CARD_NAME} "
            "(train one with `lesionsynth train-synthesizer`, or the training did not finish)"
        )
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{CARD_NAME} in {folder} is not valid JSON") from exc
    if not isinstance(card, dict) or card.get("kind") != KIND:
        raise ModelFolderError(f"{folder} holds a model card of kind {card.get('kind')!r}, not {KIND!r}")
    if card.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder} has synthesizer format {card.get('format_version')}; this lesionsynth reads {FORMAT_VERSION}"
        )
    return card


def verify_files(folder: Path, card: dict) -> None:
    """Check every file the card lists against its sha256."""
    for name, expected in card.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise ModelFolderError(f"{folder} is incomplete: {name} is missing")
        if sha256_file(path) != expected:
            raise ModelFolderError(
                f"{folder}: {name} fails its sha256 check (corrupted or modified since training); refusing to load"
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
