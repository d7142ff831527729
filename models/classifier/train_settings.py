"""train-classifier's parameters, declared once (models/spec.py): torch-free.

:class:`ClassifierTrainSettings` is the classifier's architecture (:class:`ClassifierConfig`, whose fields
it inherits) plus the recipe's own parameters. The ``lesionsynth train-classifier`` options, the
``train-classifier`` job's parameters and docs/recipes.md derive from these fields; the recipe
(models/classifier/train.py) reads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from models.classifier.balancing import STRATEGIES
from models.classifier.config import ClassifierConfig
from models.spec import param


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainSettings(ClassifierConfig):
    manifest: Path = param(kind="path", help="CSV manifest (image_path,mask_path,label,split,...).")
    positive_label: str = param(kind="label", help="Label of the positive (high-grade) class.")
    out: Path = param(kind="path", help="Output model folder.", job=False)
    balance: str = param(
        "none", choices=STRATEGIES, help="Imbalance strategy (models/classifier/balancing.py)."
    )
    epochs: int = param(30, lo=1, hi=10_000, help="Most epochs (early stopping on val AUC may end sooner).")
    batch_size: int = param(32, lo=1, hi=1024, help="Images per step.")
    learning_rate: float = param(1e-3, lo=0.0, hi=1.0, lo_open=True, help="AdamW learning rate.")
    weight_decay: float = param(1e-4, lo=0.0, hi=1.0, help="AdamW weight decay.")
    patience: int = param(10, lo=1, hi=10_000, help="Stop after this many epochs without a better val AUC.")
    target_sensitivity: float = param(
        0.9, lo=0.0, hi=1.0, lo_open=True, help="The threshold chosen on val reaches this sensitivity."
    )
    require_review: bool = param(
        False, help="Train only on synthetic rows accepted in review (rejected ones are always left out)."
    )
    seed: int = param(0, kind="seed", help="Fixes the initial weights and every random draw.")
    device: str | None = param(None, kind="device", help="cpu, cuda, cuda:1 ... (unset: cuda if present).")
    resume: bool = param(False, help="Continue from the newest checkpoint in the output folder.", job=False)
    progress: bool = param(True, help="Draw progress bars.", job=False)

    @property
    def config(self) -> ClassifierConfig:
        """The architecture and preprocessing part: what the saved folder records."""
        return ClassifierConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(ClassifierConfig)}
        )
