"""train-synthesizer's parameters, declared once (models/spec.py): torch-free.

:class:`TrainSettings` is the synthesizer's architecture (:class:`SynthesizerConfig`, whose fields it
inherits) plus the training recipe's own parameters. The ``lesionsynth train-synthesizer`` options, the
``train-synthesizer`` job's parameters (models/jobs/train_synthesizer.py), the experiment config's
``synthesizer`` keys and docs/recipes.md are all derived from these fields; the recipe
(models/diffusion/train.py) reads them. A new parameter is one ``param(...)`` line here plus its use there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from models.diffusion.config import SynthesizerConfig
from models.errors import ConfigError
from models.spec import param


def snapshot_dir(out: Path, step: int) -> Path:
    """Where the snapshot of step ``step`` is written (TrainSettings.snapshot_steps)."""
    return Path(out) / "snapshots" / f"step-{step:06d}"


@dataclass(frozen=True, kw_only=True)
class TrainSettings(SynthesizerConfig):
    manifest: Path = param(kind="path", help="CSV manifest (image_path,mask_path,label,split,...).")
    lesion_label: str = param(kind="label", help="Label of the lesion class to learn.")
    out: Path = param(kind="path", help="Output model folder.", job=False)
    normal_label: str | None = param(
        None, kind="label", help="With num_classes 2: the label whose regions are the normal class."
    )
    label_dropout: float = param(
        0.1, lo=0.0, hi=1.0, lo_open=True, help="With num_classes 2: how often a region's class is dropped."
    )
    all_regions: bool = param(
        False, help="Pre-training: learn the regions of every train row, whatever its label."
    )
    init_from: Path | None = param(
        None,
        kind="model",
        help="Fine-tune: start from this synthesizer's weights (same architecture; a job: a store version).",
    )
    max_steps: int = param(2000, lo=1, hi=10_000_000, help="Optimiser steps.")
    #: Per process: under torchrun a step sees WORLD_SIZE x batch_size regions.
    batch_size: int = param(8, lo=1, hi=1024, help="Regions per step (per process when data-parallel).")
    learning_rate: float = param(2e-4, lo=0.0, hi=1.0, lo_open=True, help="AdamW learning rate.")
    checkpoint_every: int = param(500, lo=1, hi=10_000_000, help="Steps between resumable checkpoints.")
    seed: int = param(0, kind="seed", help="Fixes the initial weights and every random draw.")
    device: str | None = param(None, kind="device", help="cpu, cuda, cuda:1 ... (unset: cuda if present).")
    processes: int = param(
        1,
        lo=1,
        hi=16,
        cli=False,
        help="Data-parallel processes, one per GPU (the job runs the recipe under torchrun).",
    )
    resume: bool = param(False, help="Continue from the newest checkpoint in the output folder.", job=False)
    progress: bool = param(True, help="Draw progress bars.", job=False)
    #: Steps at which the EMA model is also written as a full synthesizer folder under
    #: ``out/snapshots/step-NNNNNN/`` (paper 001's iteration-wise analysis of fidelity vs usefulness).
    snapshot_steps: tuple[int, ...] = ()
    warmup_steps: int = 100
    ema_max_decay: float = 0.999
    log_every: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()  # every param()'s range, and the architecture's own rule
        if self.log_every < 1:
            raise ConfigError("the log interval must be >= 1")
        if self.conditional:
            if not self.normal_label or self.normal_label == self.lesion_label:
                raise ConfigError(
                    "a class-conditional synthesizer (num_classes 2) needs --normal-label, the class other "
                    "than the lesion label whose regions it also learns"
                )
            if self.label_dropout >= 1.0:
                raise ConfigError("--label-dropout must be in (0, 1): guidance needs the null class")
            if self.all_regions:
                raise ConfigError(
                    "--all-regions is for unconditional pre-training; a class-conditional synthesizer "
                    "already learns the regions of both classes"
                )

    @property
    def config(self) -> SynthesizerConfig:
        """The architecture part: what the saved folder records and a fine-tune must match."""
        return SynthesizerConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(SynthesizerConfig)}
        )
