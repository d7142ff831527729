"""Synthesizer configuration: UNet architecture presets and the noise schedule.

The config is captured in the model folder (``unet/config.json``, ``scheduler/scheduler_config.json`` and
``model_card.json``), so a saved synthesizer is rebuilt from its folder alone. Its fields are declared
with :func:`models.spec.param`, so train-synthesizer's options and job parameters derive from them; the
module is torch-free (diffusers is imported by the builders only), so the training service can validate
a job without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from models.data.regions import DEFAULT_MARGIN
from models.errors import ConfigError
from models.spec import check_fields, param

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

#: UNet presets. ``small`` is the 3.0 M-parameter UNet measured in ../shared/STACK.md (27 ms per forward
#: at 64x64 on 2 CPU cores); ``tiny`` is for tests and the demo; ``base`` for 128/256 px on a GPU.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
    "small": dict(
        block_out_channels=(32, 64, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
    "base": dict(
        block_out_channels=(64, 128, 128, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
}

RESOLUTIONS = (32, 64, 96, 128, 256)


@dataclass(frozen=True)
class SynthesizerConfig:
    """Everything that defines a synthesizer's architecture and its training-time crops.

    Attributes:
        resolution: side of the square lesion crop the UNet sees (paper 000 trains on extracted regions).
            At the classifier's input size or above, a painted region is never shown to the classifier
            upsampled (docs/evidence/region_scale.md: at 64 px, half of the ISIC regions are, for a 96 px
            classifier).
        preset: UNet size, a key of :data:`PRESETS`.
        mask_conditioning: feed the region mask as a 4th input channel (see docs/DESIGN.md for the
            measurement that chose the default).
        margin: context around the mask's bounding box, as a fraction of its longer side.
        num_train_timesteps, beta_schedule: the DDPM forward process (Ho et al. 2020, Eq. 4).
        num_classes: 0 for the paper's unconditional UNet (lesion regions only); 2 for a class-conditional
            one (regions of both classes: 0 = normal, 1 = lesion) with a learned "null" class embedding
            (index ``num_classes``) for classifier-free guidance (Ho & Salimans 2022). The UNet is
            diffusers' ``UNet2DModel(num_class_embeds=num_classes + 1)``, so the folder loads in diffusers.
    """

    resolution: int = param(
        64,
        choices=RESOLUTIONS,
        help="Side of the square region crop the UNet sees (>= the classifier's input).",
    )
    preset: str = param("small", choices=tuple(PRESETS), help="UNet size.")
    mask_conditioning: bool = param(False, help="Give the UNet the region mask as a 4th input channel.")
    margin: float = param(
        DEFAULT_MARGIN, lo=0.0, hi=1.0, help="Context around the mask's bounding box, of its longer side."
    )
    num_train_timesteps: int = param(1000, lo=1, hi=10_000, help="DDPM steps.", cli=False, job=False)
    beta_schedule: str = param(
        "squaredcos_cap_v2", kind="text", help="DDPM noise schedule.", cli=False, job=False
    )
    num_classes: int = param(
        0, choices=(0, 2), help="0: lesion regions only (paper 000); 2: class-conditional on both classes."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        levels = len(PRESETS[self.preset]["block_out_channels"])
        if self.resolution % (2 ** (levels - 1)) or self.resolution < 2 ** (levels + 1):
            raise ConfigError(f"resolution {self.resolution} is too small for preset {self.preset!r}")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def null_class(self) -> int:
        """The class index of "no class" (label dropout in training, the unconditional branch of CFG)."""
        return self.num_classes

    @property
    def in_channels(self) -> int:
        return 4 if self.mask_conditioning else 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SynthesizerConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def build_unet(config: SynthesizerConfig) -> UNet2DModel:
    """A diffusers ``UNet2DModel`` predicting the noise epsilon of Ho et al. 2020, Eq. 14."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=config.resolution,
        in_channels=config.in_channels,
        out_channels=3,
        num_class_embeds=config.num_classes + 1 if config.conditional else None,
        **PRESETS[config.preset],
    )


def build_train_scheduler(config: SynthesizerConfig) -> DDPMScheduler:
    """The forward process q(x_t | x_0) (Ho et al. 2020, Eq. 4) used to noise training crops.

    ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021) rather than the linear schedule: at 32-64 px the linear
    schedule destroys the image in the first third of the steps, wasting most of the training signal.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def build_sample_scheduler(train_scheduler_config, solver: str = "ddim"):
    """The sampling scheduler of ``solver`` on the training schedule (the saved scheduler config).

    * ``ddim``: DDIM (Song et al. 2021, Eq. 12; the step's ``eta`` makes it stochastic) with the saved
      config as it is (``leading`` timesteps, x0 clipped to [-1, 1]): the measured default.
    * ``dpmpp-2m`` / ``dpmpp-2m-sde``: DPM-Solver++(2M) (Lu et al. 2022), diffusers'
      ``DPMSolverMultistepScheduler`` with ``algorithm_type`` ``dpmsolver++`` / ``sde-dpmsolver++``, with
      ``trailing`` timesteps, so a few steps still start from (almost) pure noise (``leading`` spacing
      starts 10 steps at t = 900, where sqrt(abar) = 0.15 of the source survives); ``lambda_min_clipped``
      -5.1, diffusers' setting for the cosine schedule: the first step is t = 995 (sqrt(abar) = 6e-3)
      rather than 999 (5e-5), where x0 = (x - sigma eps) / alpha magnifies the UNet's float rounding
      2e4 times (measured: a crop's result then moved 2e-4 with the batch it shared, 7e-6 clipped); and
      ``thresholding``, which with the saved ``sample_max_value`` 1.0 is DDIM's clipping of x0 to [-1, 1].

    UniPC (Zhao et al. 2023) is not offered: diffusers' ``UniPCMultistepScheduler`` has no
    ``lambda_min_clipped``, and its start at t = 999 had the same 1e-4 batch dependence.
    """
    if solver == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(train_scheduler_config)
    algorithms = {"dpmpp-2m": "dpmsolver++", "dpmpp-2m-sde": "sde-dpmsolver++"}
    if solver not in algorithms:
        raise ConfigError(f"unknown solver {solver!r}; one of ddim, {', '.join(algorithms)}")
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        train_scheduler_config,
        algorithm_type=algorithms[solver],
        solver_order=2,
        timestep_spacing="trailing",
        lambda_min_clipped=-5.1,
        thresholding=True,
    )
