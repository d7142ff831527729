"""balance's parameters, declared once (models/spec.py): torch-free.

The ``lesionsynth balance`` options, the ``balance`` job's parameters and docs/recipes.md derive from
these fields; :func:`models.balance.balance_dataset` reads them. The sampler settings are the sampler's
own declarations (models/diffusion/sampler_settings.py) with "unset" as the default: unset means the
sampler's measured default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.diffusion.sampler_settings import SamplerSettings
from models.errors import ConfigError
from models.spec import check_fields, optional, param

MODES = ("add", "replace")


@dataclass(frozen=True, kw_only=True)
class BalanceSettings:
    manifest: Path = param(kind="path", help="CSV manifest with a split column; only train rows are sources.")
    model: Path | None = param(
        None, kind="model", help="Synthesizer folder (a job: a model store version, default the latest)."
    )
    normal_label: str = param(kind="label", help="Label of the images to transform.")
    lesion_label: str = param(kind="label", help="Label the synthetic images get.")
    count: int = param(kind="integer", lo=1, hi=1_000_000, help="How many synthetic lesion images to make.")
    out: Path = param(kind="path", help="Output folder (manifest.csv + synthetic/).", job=False)
    seed: int = param(0, kind="seed", help="Which sources and which noise: the same seed, the same images.")
    solver: str | None = optional(SamplerSettings, "solver")
    steps: int | None = optional(SamplerSettings, "steps")
    strength: float | None = optional(SamplerSettings, "strength")
    eta: float | None = optional(SamplerSettings, "eta")
    resample: int | None = optional(SamplerSettings, "resample")
    guidance: float | None = optional(SamplerSettings, "guidance")
    batch_size: int = param(8, lo=1, hi=256, help="Images per UNet batch (per wave of requests when remote).")
    progress: bool = param(True, help="Draw progress bars.", job=False)
    #: "add": the synthetic images join the real rows; "replace": the converted normal rows are marked
    #: ``converted = 1`` and the synthetic strategies leave them out (paper 000's design).
    mode: str = param(
        "add", choices=MODES, help="add: synthetic rows join the real ones; replace: converted normals leave."
    )
    masks: str = param(
        "own",
        choices=("own", "proposed", "auto"),
        help="own: each row's mask; proposed: a proposed mask (shape bank, in tissue); auto: own, else proposed.",
    )
    #: Only normal rows whose ``role`` column is one of these are converted (None: every normal train row).
    source_roles: tuple[str, ...] | None = None
    #: An acceptance filter folder (models.acceptance): up to ``count * max_tries`` candidates are made and
    #: the first ``count`` whose region it scores >= ``accept_threshold`` are kept.
    acceptance_filter: Path | None = None
    accept_threshold: float = 0.5
    max_tries: int = 4

    def __post_init__(self) -> None:
        check_fields(self)
        if self.normal_label == self.lesion_label:
            raise ConfigError("--normal-label and --lesion-label must differ")
        if self.acceptance_filter is not None and not 1 <= self.max_tries <= 100:
            raise ConfigError(f"max_tries must be in [1, 100], not {self.max_tries}")
