"""``model_card.json``: the commit marker and integrity record of every saved model folder.

A model folder is valid only when its card exists, names the expected ``kind`` and format, and every
file it lists has the recorded sha256. The card is removed first and written last by the writers, so a
crash mid-write leaves a folder that is visibly not a model rather than a model with mismatched files.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from models import __version__
from models.artifacts import atomic_write_json, sha256_file
from models.errors import ModelFolderError

CARD_NAME = "model_card.json"


def versions() -> dict[str, str]:
    # Imported here: the classifier service reads cards without torch installed.
    import diffusers
    import torch

    return {
        "lesionsynth": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def write_card(folder: Path, card: dict, files: list[str], version_file: str) -> dict:
    """Hash ``files`` (relative to ``folder``), add kind-independent fields and write the card last."""
    hashes = {name: sha256_file(folder / name) for name in files}
    full = {**card, "files": hashes, "model_version": hashes[version_file][:12], "versions": versions()}
    atomic_write_json(folder / CARD_NAME, full)
    return full


def read_card(folder: str | Path, kind: str, format_version: int, hint: str) -> dict:
    """The card of ``folder`` if it is a model of ``kind``; a clear ModelFolderError otherwise."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderError(f"model folder does not exist: {folder}")
    if not folder.is_dir():
        raise ModelFolderError(f"model path is not a folder: {folder}")
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelFolderError(
            f"{folder} is not a {kind.replace('.', ' ')}: it has no {CARD_NAME} ({hint}, or the training did not finish)"
        )
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{CARD_NAME} in {folder} is not valid JSON") from exc
    if not isinstance(card, dict) or card.get("kind") != kind:
        found = card.get("kind") if isinstance(card, dict) else None
        raise ModelFolderError(f"{folder} holds a model card of kind {found!r}, not {kind!r}")
    if card.get("format_version") != format_version:
        raise ModelFolderError(
            f"{folder} has {kind} format {card.get('format_version')}; this lesionsynth reads {format_version}"
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
