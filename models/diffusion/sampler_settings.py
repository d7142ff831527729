"""How the inpainter samples a region (steps, strength, eta, resample) and the limits on each: torch-free.

Kept apart from :mod:`models.diffusion.inpaint` (which imports torch and diffusers) so the synthesis
service can validate requests, and ``bentoml serve``'s supervisor process can import the service
module, without loading torch: the supervisor then stays ~100 MB instead of ~850 MB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from models.errors import ParameterError

MAX_STEPS = 200
MAX_RESAMPLE = 10
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 20.0


@dataclass(frozen=True)
class SamplerSettings:
    """How a region is sampled. The defaults were chosen by measurement on held-out PH2 data
    (docs/benchmarks/design_choices.md): starting from pure noise (strength 1.0) with stochastic DDIM
    steps (eta 1.0) gave the most lesion-like regions at 25 UNet calls; 50 steps was somewhat better at
    twice the cost and ``resample=2`` no better; ``strength < 1`` keeps more of the source region's
    structure (paper 000's partial noising) and was measured less lesion-like.

    Attributes:
        steps: DDIM steps over the whole schedule (the run takes ``round(steps * strength)`` of them).
        strength: noise level the region starts from, in (0, 1]; 1.0 = pure noise.
        eta: DDIM stochasticity in [0, 1] (Song et al. 2021, Eq. 16): 0 deterministic, 1 DDPM-like.
        resample: times each step is taken, re-noising in between (RePaint's resampling, jump length 1).
        guidance: classifier-free guidance scale toward the lesion class (Ho & Salimans 2022), for
            class-conditional synthesizers only: eps = eps_null + guidance * (eps_lesion - eps_null);
            1 samples the lesion class's conditional model (one UNet pass), 0 the unconditional one,
            > 1 pushes away from what the classes share. Not 1: the conditional and null passes run as
            one UNet call of twice the batch (counted as one evaluation, about twice the time).
    """

    steps: int = 25
    strength: float = 1.0
    eta: float = 1.0
    resample: int = 1
    guidance: float = 1.0

    def check(self) -> None:
        if (
            isinstance(self.steps, bool)
            or not isinstance(self.steps, int)
            or not 1 <= self.steps <= MAX_STEPS
        ):
            raise ParameterError(f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        if not (isinstance(self.strength, int | float) and 0.0 < float(self.strength) <= 1.0):
            raise ParameterError(f"strength must be in (0, 1], got {self.strength!r}")
        if not (isinstance(self.eta, int | float) and 0.0 <= float(self.eta) <= 1.0):
            raise ParameterError(f"eta must be in [0, 1], got {self.eta!r}")
        if (
            isinstance(self.resample, bool)
            or not isinstance(self.resample, int)
            or not 1 <= self.resample <= MAX_RESAMPLE
        ):
            raise ParameterError(f"resample must be an integer in [1, {MAX_RESAMPLE}], got {self.resample!r}")
        if not (
            isinstance(self.guidance, int | float)
            and not isinstance(self.guidance, bool)
            and 0.0 <= float(self.guidance) <= MAX_GUIDANCE
        ):
            raise ParameterError(f"guidance must be in [0, {MAX_GUIDANCE:g}], got {self.guidance!r}")

    @property
    def unet_calls(self) -> int:
        """UNet evaluations per crop."""
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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ParameterError(f"seed must be an integer in [0, 2^63 - 1], got {seed!r}")
