"""How the inpainter samples a region (solver, steps, strength, eta, resample, guidance) and the limits on
each: torch-free.

Kept apart from :mod:`models.diffusion.inpaint` (which imports torch and diffusers) so the synthesis
service can validate requests, and ``bentoml serve``'s supervisor process can import the service
module, without loading torch: the supervisor then stays ~100 MB instead of ~850 MB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from models.spec import MAX_SEED as MAX_SEED
from models.spec import SEED, check_fields, check_value, param

MAX_STEPS = 200
MAX_RESAMPLE = 10
MAX_GUIDANCE = 20.0
#: The solvers (models/diffusion/solvers.py, schedulers in models/diffusion/config.py): DDIM (Song et al.
#: 2021), DPM-Solver++(2M) and its SDE variant (Lu et al. 2022). All re-impose the known region every step.
SOLVERS = ("ddim", "dpmpp-2m", "dpmpp-2m-sde")


@dataclass(frozen=True)
class SamplerSettings:
    """How a region is sampled. The default is DPM-Solver++(2M), SDE variant, 6 steps from pure noise
    (6 UNet calls), chosen by the rule declared in loadtests/benchmarks/fast_sampler.py on ISIC 2017
    validation data only (docs/benchmarks/fast_sampler.md: 64 val non-melanoma images painted in their own
    lesion masks; KID on the features of the experiment's real-data-only classifier): against the former
    default, 25 stochastic DDIM steps (eta 1), KID vs real val melanoma 40.6 +- 37.7 vs 44.2 +- 38.6, KID
    vs real val non-melanoma 1.79 +- 2.58 vs 2.41 +- 2.74, mean P(lesion) 0.225 vs 0.173, 0.59 vs 1.92 s
    per image. Those KID stds (subsets of 15 melanomas) are wide: the figures show no loss, not
    equality. The deterministic DPM-Solver++(2M) (``dpmpp-2m``) leaves visible speckle in the region at
    10 steps (measured, not recommended). DDIM's own settings were measured on held-out PH2 data
    (docs/benchmarks/design_choices.md): 25 steps with eta 1 gave the most lesion-like regions, 50 somewhat
    better at twice the cost, ``resample=2`` no better; ``strength < 1`` keeps more of the source region's
    structure (paper 000's partial noising) and was measured less lesion-like.

    ``guidance`` is for class-conditional synthesizers only: eps = eps_null + guidance * (eps_lesion -
    eps_null) (Ho & Salimans 2022); 1 samples the lesion class's conditional model (one UNet pass), 0 the
    unconditional one, > 1 pushes away from what the classes share. Not 1: the conditional and null passes
    run as one UNet call of twice the batch (counted as one evaluation, about twice the time).

    ``solver``: how each step is taken (:mod:`models.diffusion.solvers`). Every solver costs one UNet
    evaluation per step; ``eta`` applies to DDIM only (``dpmpp-2m-sde`` is stochastic by construction, the
    others deterministic given the starting noise); ``resample`` works with every solver.
    """

    solver: str = param(
        "dpmpp-2m-sde",
        choices=SOLVERS,
        help="Step rule: ddim, or DPM-Solver++(2M) (dpmpp-2m; dpmpp-2m-sde stochastic) for fewer steps.",
    )
    steps: int = param(
        6, lo=1, hi=MAX_STEPS, help="Solver steps over the whole schedule (the run takes steps x strength)."
    )
    strength: float = param(
        1.0, lo=0.0, hi=1.0, lo_open=True, help="Noise level the region starts from; 1 = pure noise."
    )
    eta: float = param(
        1.0, lo=0.0, hi=1.0, help="DDIM stochasticity (Song et al. 2021, Eq. 16): 0 deterministic; DDIM only."
    )
    resample: int = param(
        1, lo=1, hi=MAX_RESAMPLE, help="Takes per step, re-noising in between (RePaint); each more = 1x time."
    )
    guidance: float = param(
        1.0,
        lo=0.0,
        hi=MAX_GUIDANCE,
        help="Class-conditional synthesizers: guidance toward the lesion class; not 1 = 2x time.",
    )

    def check(self) -> None:
        check_fields(self)

    @property
    def unet_calls(self) -> int:
        """UNet evaluations per crop: one per step taken (any solver), ``resample`` per step but the last."""
        n_run = min(max(int(round(self.steps * self.strength)), 1), self.steps)
        return (n_run - 1) * self.resample + 1

    def as_kwargs(self) -> dict:
        return asdict(self)

    def with_overrides(self, **values) -> SamplerSettings:
        chosen = {k: v for k, v in values.items() if v is not None}
        settings = replace(self, **chosen)
        settings.check()
        return settings


DEFAULTS = SamplerSettings()


def check_seed(seed: int) -> None:
    check_value(SEED, seed, "seed")
