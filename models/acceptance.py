"""An acceptance filter for synthetic lesions (issue 11, variant 4): a region classifier that keeps a
synthetic region only when it scores it as a lesion.

It is the crop classifier of :mod:`models.evaluation.crop_classifier` (ResNet-18 on the masked-region crops,
class-balanced loss), trained on the lesion and normal regions of the ``train`` rows it is given, never on
``val`` or ``test``; the ``val`` regions, when the manifest has them, only measure it (``val_auc`` in the
card). A balancing run with a filter tries more candidates than it needs and keeps the first ``count``
that pass (:mod:`models.balance`).

Folder::

    model.safetensors   ResNet-18 weights (2 classes: normal, lesion)
    model_card.json     kind, resolution and margin of the crops, the rows trained on, val AUC, sha256s
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torchvision.models import resnet18

from models.artifacts import atomic_writer
from models.data.manifest import load_manifest
from models.data.regions import DEFAULT_MARGIN, lesion_crop
from models.diffusion.crops import LesionCrops
from models.errors import ConfigError
from models.evaluation.crop_classifier import lesion_probability, train_crop_classifier
from models.evaluation.roc import roc_auc
from models.model_card import CARD_NAME, read_card, verify_files, write_card

KIND = "lesionsynth.acceptance_filter"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class FilterSettings:
    manifest: Path
    lesion_label: str
    normal_label: str
    out: Path
    resolution: int = 64
    margin: float = DEFAULT_MARGIN
    epochs: int = 30
    seed: int = 0
    progress: bool = False
    #: Only train rows whose ``role`` column is one of these (a benchmark's synthesizer roles).
    roles: tuple[str, ...] | None = None


def train_acceptance_filter(s: FilterSettings) -> dict:
    """Train the filter on the ``train`` regions of both classes; return its card (a finished folder is
    reused as it is)."""
    if (Path(s.out) / CARD_NAME).is_file():
        return read_card(s.out, KIND, FORMAT_VERSION, hint="")
    manifest = load_manifest(s.manifest, progress=s.progress)
    lesions, normals = (
        [r for r in manifest.rows_in("train", label) if s.roles is None or r.fields.get("role") in s.roles]
        for label in (s.lesion_label, s.normal_label)
    )
    if not lesions or not normals:
        raise ConfigError(
            "an acceptance filter needs 'train' regions of both the lesion and the normal class"
        )
    crops = LesionCrops.from_rows(
        normals + lesions, s.resolution, s.margin, s.progress, labels=[0] * len(normals) + [1] * len(lesions)
    )
    net = train_crop_classifier(crops.images, crops.labels, epochs=s.epochs, seed=s.seed, progress=s.progress)
    card = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "lesion_label": s.lesion_label,
        "normal_label": s.normal_label,
        "resolution": s.resolution,
        "margin": s.margin,
        "epochs": s.epochs,
        "seed": s.seed,
        "manifest_sha256": manifest.sha256(),
        "image_rows": crops.rows,
        "regions_per_class": {"normal": len(normals), "lesion": len(lesions)},
        "val_auc": _val_auc(net, manifest, s),
    }
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out / WEIGHTS) as fh:
        fh.write(save({k: v.contiguous() for k, v in net.state_dict().items()}))
    return write_card(out, {**card, "kind": KIND, "format_version": FORMAT_VERSION}, [WEIGHTS], WEIGHTS)


def _val_auc(net: torch.nn.Module, manifest, s: FilterSettings) -> float | None:
    """How well the filter tells real lesion from real normal regions it never saw (val rows)."""
    lesions, normals = (manifest.rows_in("val", label) for label in (s.lesion_label, s.normal_label))
    if not lesions or not normals:
        return None
    crops = LesionCrops.from_rows(normals + lesions, s.resolution, s.margin)
    scores = lesion_probability(net, crops.images).numpy()
    return round(roc_auc(np.r_[np.zeros(len(normals)), np.ones(len(lesions))], scores), 4)


class AcceptanceFilter:
    """Scores synthetic images by P(lesion) of their masked region; ``accepts`` at ``threshold``."""

    def __init__(self, net: torch.nn.Module, card: dict, threshold: float = 0.5):
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"the acceptance threshold must be in (0, 1), not {threshold}")
        self.net, self.card, self.threshold = net.eval(), card, threshold

    @classmethod
    def load(cls, folder: str | Path, threshold: float = 0.5) -> AcceptanceFilter:
        folder = Path(folder)
        card = read_card(folder, KIND, FORMAT_VERSION, hint="train one with an experiment's balance.filter")
        verify_files(folder, card)
        net = resnet18(weights=None, num_classes=2)
        net.load_state_dict(load_file(folder / WEIGHTS))
        return cls(net, card, threshold)

    @property
    def model_version(self) -> str:
        return self.card["model_version"]

    def score(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        """images (H, W, 3) uint8 and their masks (H, W) -> (N,) P(lesion) of each masked region."""
        crops = [
            lesion_crop(i, m, self.card["resolution"], self.card["margin"])[0]
            for i, m in zip(images, masks, strict=True)
        ]
        return lesion_probability(self.net, torch.stack(crops)).numpy()
