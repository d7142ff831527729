"""The denoising loop of :meth:`LesionInpainter.sample_crops`: one step rule per solver, each followed by
the known-region update of RePaint (Lugmayr et al. 2022, Eq. 8),

    x_{t_next} <- m * x_{t_next} + (1 - m) * q(x0, t_next),   q(x0, t) = sqrt(abar_t) x0 + sqrt(1 - abar_t) n,

with ``n`` the crop's own noise, drawn once (the noise its start was made from), so the known part the
UNet sees at every step is the source noised consistently along the trajectory.

Multistep solvers (DPM-Solver++(2M)) keep the data predictions x0_hat of earlier steps and build
the next step from them. Their updates are per pixel (thresholding at the saved ``sample_max_value`` 1
is a clip): a stored prediction at a known pixel only ever feeds
the same known pixel, which the update above overwrites after every step. So the stored history is left
as the solver made it: in the generated region it is the model's own prediction from an input whose known
part was re-imposed, which is what the solver's extrapolation needs, and nothing of the known region's
stale history reaches the output.

``resample > 1`` (RePaint's resampling, jump length 1) takes a step, re-noises the result back to the
step's start with q(x_t | x_{t_next}) and takes it again; for a multistep solver the scheduler's state
(stored predictions, step index) is restored to what it was before the step, so every take starts from
the same history.

Every random draw of crop i comes from its generator ``gens[i]`` (``randn``), in a fixed order per step,
and every operation is per crop, so a crop's result does not depend on which crops share the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _copy(state: dict) -> dict:
    """A scheduler's attributes, its lists (the stored predictions) copied: steps replace list items."""
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


def denoise(
    scheduler,
    solver: str,
    timesteps: torch.Tensor,
    x: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    m_gen: torch.Tensor,
    predict: Predict,
    randn: Callable[[], torch.Tensor],
    eta: float,
    resample: int,
) -> torch.Tensor:
    """From ``x`` at ``timesteps[0]`` down to t = 0; ``predict(x, t)`` is one UNet evaluation (noise).

    Args:
        scheduler: from :func:`models.diffusion.config.build_sample_scheduler` for ``solver``, with
            ``set_timesteps`` done; ``timesteps`` is (a suffix of) its ``timesteps``.
        x0, noise, m_gen: the known crops, their fixed noise and the region to generate (1) or keep (0).
        randn: the next per-crop draw of standard normal noise, shaped like ``x0``.
        eta: DDIM's stochasticity (other solvers ignore it).
    """
    abar = scheduler.alphas_cumprod.to(x.device)
    batch = x0.shape[0]
    for i, t in enumerate(timesteps):
        last = i + 1 == len(timesteps)
        takes = 1 if last else resample
        before = _copy(vars(scheduler)) if takes > 1 else {}
        for r in range(takes):
            if r:
                scheduler.__dict__ = _copy(before)
            eps = predict(x, t)
            if solver == "ddim":
                variance_noise = randn() if eta > 0 else None
                x_next = scheduler.step(eps, t, x, eta=eta, variance_noise=variance_noise).prev_sample
            elif solver == "dpmpp-2m-sde":
                x_next = scheduler.step(eps, t, x, variance_noise=randn()).prev_sample
            else:
                x_next = scheduler.step(eps, t, x).prev_sample
            known = x0 if last else scheduler.add_noise(x0, noise, timesteps[i + 1 : i + 2].repeat(batch))
            x_next = m_gen * x_next + (1 - m_gen) * known
            if r + 1 < takes:
                # q(x_t | x_{t_next}) over the stride: back up one step and take it again.
                ratio = abar[t] / abar[timesteps[i + 1]]
                x = ratio.sqrt() * x_next + (1 - ratio).sqrt() * randn()
        x = x_next
    return x
